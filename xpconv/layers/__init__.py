"""Layers with the book's names and ``forward``/``backward`` interface."""
from .convolution import Convolution
from .pooling import Pooling

__all__ = ["Convolution", "Pooling"]
