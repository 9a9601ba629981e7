"""Layers with the book's names and ``forward``/``backward`` interface."""
from .basic import Affine, Dropout, Flatten, Relu, Sigmoid
from .convolution import Convolution
from .loss import SoftmaxWithLoss, cross_entropy_error, softmax
from .normalization import BatchNormalization
from .pooling import Pooling

__all__ = ["Affine", "BatchNormalization", "Convolution", "Dropout", "Flatten", "Pooling", "Relu",
           "Sigmoid", "SoftmaxWithLoss", "cross_entropy_error", "softmax"]
