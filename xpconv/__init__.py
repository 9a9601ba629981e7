"""xpconv: the convolutional-network chapter of *Deep Learning from Scratch*, on any
Array API backend (NumPy, CuPy, PyTorch, JAX, array-api-strict)."""
from . import functional
from .devices import Device, available_devices, device, to_numpy
from .layers import Convolution, Pooling
from .workspace import get_workspace_limit, set_workspace_limit, workspace_limit

__version__ = "0.1.0"

__all__ = [
    "Device", "device", "available_devices", "to_numpy",
    "functional", "Convolution", "Pooling",
    "get_workspace_limit", "set_workspace_limit", "workspace_limit",
]
