"""xpconv: the convolutional-network chapter of *Deep Learning from Scratch*, written once
against the Python Array API, so the same code runs on NumPy, CuPy, PyTorch, JAX and
array-api-strict.

>>> import xpconv
>>> net = xpconv.SimpleConvNet(device="cpu", seed=0)      # or device="cuda"
>>> net.predict(x).shape                                   # doctest: +SKIP
(N, 10)
"""
from . import _startup, datasets, distributed, functional  # noqa: F401  (_startup first: Ctrl-C while starting)
from .compile import compile_step
from .devices import Device, available_devices, device, to_numpy
from .gradcheck import numerical_gradient
from .layers import (
                     Affine,
                     BatchNormalization,
                     Convolution,
                     Dropout,
                     Flatten,
                     Pooling,
                     Relu,
                     Sigmoid,
                     SoftmaxWithLoss,
                     cross_entropy_error,
                     softmax,
)
from .model_io import load_model
from .models import DeepConvNet, LeNet, SimpleConvNet
from .network import Parameters, Sequential
from .optimizers import SGD, AdaGrad, Adam, Momentum, Nesterov, RMSprop, get_optimizer
from .thread_defaults import thread_report
from .threads import get_num_threads, set_num_threads
from .trainer import Trainer, TrainingDiverged, TrainingInterrupted
from .workspace import get_workspace_limit, set_workspace_limit, workspace_limit

__version__ = "0.1.0"

__all__ = [
    # devices
    "Device", "device", "available_devices", "to_numpy",
    # ops and layers
    "functional", "Convolution", "Pooling", "Affine", "Relu", "Sigmoid", "Flatten", "Dropout",
    "BatchNormalization", "SoftmaxWithLoss", "softmax", "cross_entropy_error",
    # networks and training
    "Sequential", "Parameters", "SimpleConvNet", "DeepConvNet", "LeNet",
    "SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam", "get_optimizer",
    "compile_step",
    "Trainer", "TrainingDiverged", "TrainingInterrupted", "numerical_gradient", "load_model",
    # data, memory, threads
    "datasets", "distributed", "get_workspace_limit", "set_workspace_limit", "workspace_limit",
    "get_num_threads", "set_num_threads", "thread_report",
]
