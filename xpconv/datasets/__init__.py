"""Data sets in the format of "Deep Learning from Scratch".

Every loader returns ``((x_train, t_train), (x_test, t_test))`` as host
numpy arrays (a :class:`DataSplits`, which also names the classes where it can).
"""

from .folder import load_image_folder
from .idx import read_idx
from .mnist import DatasetUnavailableError, load_bundled_mnist, load_mnist
from .named import load_cifar10, load_fashion_mnist
from .npz import load_npz_dataset
from .registry import DATASET_NAMES, load_dataset, load_evaluation_data
from .result import DataSplits
from .split import stratified_split

__all__ = [
    "DATASET_NAMES",
    "DataSplits",
    "DatasetUnavailableError",
    "load_bundled_mnist",
    "load_cifar10",
    "load_dataset",
    "load_evaluation_data",
    "load_fashion_mnist",
    "load_image_folder",
    "load_mnist",
    "load_npz_dataset",
    "read_idx",
    "stratified_split",
]
