"""Data sets in the format of "Deep Learning from Scratch".

Every loader returns ``((x_train, t_train), (x_test, t_test))`` as host
numpy arrays.
"""

from .idx import read_idx
from .mnist import DatasetUnavailableError, load_bundled_mnist, load_mnist
from .npz import load_npz_dataset
from .registry import load_dataset

__all__ = [
    "read_idx",
    "load_mnist",
    "load_bundled_mnist",
    "load_npz_dataset",
    "load_dataset",
    "DatasetUnavailableError",
]
