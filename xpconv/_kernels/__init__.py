"""Kernels of the ops (internal): im2col/col2im windows, convolution and pooling, their
geometry and input checks, and the library-specific fast paths. The public API over
them is :mod:`xpconv.functional` and the layers.
"""
