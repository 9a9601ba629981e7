"""The BASELINE: the textbook CNN in plain NumPy -- this is *not* xpconv.

This module re-implements, as a point of comparison for the benchmark, the
algorithm of the CNN chapter of "Deep Learning from Scratch" exactly the way
the book writes it:

* ``im2col`` fills a 6-D array ``col[N, C, FH, FW, OH, OW]`` with a Python loop
  over the (y, x) filter offsets (``col[:, :, y, x, :, :] = img[..., y::s, x::s]``)
  and then does ``transpose(0, 4, 5, 1, 2, 3).reshape(N*OH*OW, -1)``;
* ``col2im`` is the inverse loop, scattering back with ``+=``;
* ``Convolution`` keeps ``col`` / ``col_W`` and multiplies them with ``np.dot``;
* ``Pooling`` goes through ``im2col`` and ``argmax``;
* ``SimpleConvNet.gradient`` runs forward, loss and backward through every
  layer, including ``dx`` of the first convolution (which nobody needs, but the
  book computes it);
* ``Adam`` updates each parameter in place with one line per formula, its bias
  correction folded into the step size ``lr_t``.

Everything is float32 (weights and inputs are cast), so timings compare like
with like against xpconv and PyTorch.  Nothing here is tuned: it is the book's
algorithm, used as the "before" number in ``xpconv bench``.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

DTYPE = np.float32


def _out_size(size, filter_size, stride, pad):
    """Output length of a sliding window along one axis."""
    return (size + 2 * pad - filter_size) // stride + 1


def im2col(input_data, filter_h, filter_w, stride=1, pad=0):
    """Unfold (N, C, H, W) images into a 2-D (N*OH*OW, C*FH*FW) matrix.

    The book's loop: one strided slice copy per (y, x) filter offset into the
    6-D buffer ``col[N, C, FH, FW, OH, OW]``, then one transpose + reshape.
    """
    N, C, H, W = input_data.shape
    out_h = _out_size(H, filter_h, stride, pad)
    out_w = _out_size(W, filter_w, stride, pad)

    img = np.pad(input_data, [(0, 0), (0, 0), (pad, pad), (pad, pad)], "constant")
    col = np.zeros((N, C, filter_h, filter_w, out_h, out_w), dtype=input_data.dtype)
    for y in range(filter_h):
        y_max = y + stride * out_h
        for x in range(filter_w):
            x_max = x + stride * out_w
            col[:, :, y, x, :, :] = img[:, :, y:y_max:stride, x:x_max:stride]

    return col.transpose(0, 4, 5, 1, 2, 3).reshape(N * out_h * out_w, -1)


def col2im(col, input_shape, filter_h, filter_w, stride=1, pad=0):
    """Fold a (N*OH*OW, C*FH*FW) matrix back into (N, C, H, W) images.

    The adjoint of :func:`im2col`: overlapping windows are summed with ``+=``.
    """
    N, C, H, W = input_shape
    out_h = _out_size(H, filter_h, stride, pad)
    out_w = _out_size(W, filter_w, stride, pad)
    col = col.reshape(N, out_h, out_w, C, filter_h, filter_w).transpose(0, 3, 4, 5, 1, 2)

    img = np.zeros((N, C, H + 2 * pad + stride - 1, W + 2 * pad + stride - 1), dtype=col.dtype)
    for y in range(filter_h):
        y_max = y + stride * out_h
        for x in range(filter_w):
            x_max = x + stride * out_w
            img[:, :, y:y_max:stride, x:x_max:stride] += col[:, :, y, x, :, :]

    return img[:, :, pad:H + pad, pad:W + pad]


class Relu:
    """ReLU with the book's boolean mask."""

    def __init__(self):
        self.mask = None

    def forward(self, x):
        self.mask = x <= 0
        out = x.copy()
        out[self.mask] = 0
        return out

    def backward(self, dout):
        dout[self.mask] = 0
        return dout


class Affine:
    """Fully connected layer ``x @ W + b`` (input flattened to 2-D)."""

    def __init__(self, W, b):
        self.W = np.asarray(W, dtype=DTYPE)
        self.b = np.asarray(b, dtype=DTYPE)
        self.x = None
        self.original_x_shape = None
        self.dW = None
        self.db = None

    def forward(self, x):
        self.original_x_shape = x.shape
        self.x = x.reshape(x.shape[0], -1)
        return np.dot(self.x, self.W) + self.b

    def backward(self, dout):
        dx = np.dot(dout, self.W.T)
        self.dW = np.dot(self.x.T, dout)
        self.db = np.sum(dout, axis=0)
        return dx.reshape(*self.original_x_shape)


def softmax(x):
    """Row-wise softmax, shifted by the row max for stability."""
    x = x - np.max(x, axis=-1, keepdims=True)
    e = np.exp(x)
    return e / np.sum(e, axis=-1, keepdims=True)


def cross_entropy_error(y, t):
    """Mean cross entropy; ``t`` may be one-hot or integer labels."""
    if y.ndim == 1:
        t = t.reshape(1, t.size)
        y = y.reshape(1, y.size)
    if t.size == y.size:
        t = t.argmax(axis=1)
    batch_size = y.shape[0]
    return -np.sum(np.log(y[np.arange(batch_size), t] + 1e-7)) / batch_size


class SoftmaxWithLoss:
    """Softmax followed by cross entropy; backward gives ``(y - t) / N``."""

    def __init__(self):
        self.loss = None
        self.y = None
        self.t = None

    def forward(self, x, t):
        self.t = t
        self.y = softmax(x)
        self.loss = cross_entropy_error(self.y, self.t)
        return self.loss

    def backward(self, dout=1):
        batch_size = self.t.shape[0]
        if self.t.size == self.y.size:  # one-hot labels
            dx = (self.y - self.t) / batch_size
        else:
            dx = self.y.copy()
            dx[np.arange(batch_size), self.t] -= 1
            dx = dx / batch_size
        return dx.astype(DTYPE, copy=False)


class Convolution:
    """Convolution as ``im2col(x) @ W.reshape(FN, -1).T`` (the book's layer)."""

    def __init__(self, W, b, stride=1, pad=0):
        self.W = np.asarray(W, dtype=DTYPE)
        self.b = np.asarray(b, dtype=DTYPE)
        self.stride = stride
        self.pad = pad
        self.x = None
        self.col = None
        self.col_W = None
        self.dW = None
        self.db = None

    def forward(self, x):
        FN, C, FH, FW = self.W.shape
        N, C, H, W = x.shape
        out_h = _out_size(H, FH, self.stride, self.pad)
        out_w = _out_size(W, FW, self.stride, self.pad)

        col = im2col(x, FH, FW, self.stride, self.pad)
        col_W = self.W.reshape(FN, -1).T
        out = np.dot(col, col_W) + self.b
        out = out.reshape(N, out_h, out_w, -1).transpose(0, 3, 1, 2)

        self.x = x
        self.col = col
        self.col_W = col_W
        return out

    def backward(self, dout):
        FN, C, FH, FW = self.W.shape
        dout = dout.transpose(0, 2, 3, 1).reshape(-1, FN)

        self.db = np.sum(dout, axis=0)
        self.dW = np.dot(self.col.T, dout).transpose(1, 0).reshape(FN, C, FH, FW)

        dcol = np.dot(dout, self.col_W.T)
        return col2im(dcol, self.x.shape, FH, FW, self.stride, self.pad)


class Pooling:
    """Max pooling via ``im2col`` + ``argmax`` (the book's layer)."""

    def __init__(self, pool_h, pool_w, stride=1, pad=0):
        self.pool_h = pool_h
        self.pool_w = pool_w
        self.stride = stride
        self.pad = pad
        self.x = None
        self.arg_max = None

    def forward(self, x):
        N, C, H, W = x.shape
        out_h = _out_size(H, self.pool_h, self.stride, self.pad)
        out_w = _out_size(W, self.pool_w, self.stride, self.pad)

        col = im2col(x, self.pool_h, self.pool_w, self.stride, self.pad)
        col = col.reshape(-1, self.pool_h * self.pool_w)

        arg_max = np.argmax(col, axis=1)
        out = np.max(col, axis=1)
        out = out.reshape(N, out_h, out_w, C).transpose(0, 3, 1, 2)

        self.x = x
        self.arg_max = arg_max
        return out

    def backward(self, dout):
        dout = dout.transpose(0, 2, 3, 1)

        pool_size = self.pool_h * self.pool_w
        dmax = np.zeros((dout.size, pool_size), dtype=dout.dtype)
        dmax[np.arange(self.arg_max.size), self.arg_max.flatten()] = dout.flatten()
        dmax = dmax.reshape(dout.shape + (pool_size,))

        dcol = dmax.reshape(dmax.shape[0] * dmax.shape[1] * dmax.shape[2], -1)
        return col2im(dcol, self.x.shape, self.pool_h, self.pool_w, self.stride, self.pad)


class SimpleConvNet:
    """conv - relu - pool - affine - relu - affine - softmax (the book's net).

    Weights are drawn from ``np.random.default_rng(seed)`` scaled by
    ``weight_init_std`` and stored as float32.
    """

    def __init__(self, input_dim=(1, 28, 28),
                 conv_param=None, hidden_size=100, output_size=10,
                 weight_init_std=0.01, seed=0):
        conv_param = conv_param or {"filter_num": 30, "filter_size": 5, "pad": 0, "stride": 1}
        filter_num = conv_param["filter_num"]
        filter_size = conv_param["filter_size"]
        filter_pad = conv_param["pad"]
        filter_stride = conv_param["stride"]
        channels, input_size = input_dim[0], input_dim[1]
        conv_output_size = _out_size(input_size, filter_size, filter_stride, filter_pad)
        pool_output_size = filter_num * (conv_output_size // 2) * (conv_output_size // 2)

        rng = np.random.default_rng(seed)

        def init(*shape):
            return (weight_init_std * rng.standard_normal(shape)).astype(DTYPE)

        self.params = {
            "W1": init(filter_num, channels, filter_size, filter_size),
            "b1": np.zeros(filter_num, dtype=DTYPE),
            "W2": init(pool_output_size, hidden_size),
            "b2": np.zeros(hidden_size, dtype=DTYPE),
            "W3": init(hidden_size, output_size),
            "b3": np.zeros(output_size, dtype=DTYPE),
        }

        self.layers = OrderedDict()
        self.layers["Conv1"] = Convolution(self.params["W1"], self.params["b1"],
                                           filter_stride, filter_pad)
        self.layers["Relu1"] = Relu()
        self.layers["Pool1"] = Pooling(pool_h=2, pool_w=2, stride=2)
        self.layers["Affine1"] = Affine(self.params["W2"], self.params["b2"])
        self.layers["Relu2"] = Relu()
        self.layers["Affine2"] = Affine(self.params["W3"], self.params["b3"])
        self.last_layer = SoftmaxWithLoss()

    def predict(self, x):
        """Class scores (before softmax) for a batch of images."""
        x = np.asarray(x, dtype=DTYPE)
        for layer in self.layers.values():
            x = layer.forward(x)
        return x

    def loss(self, x, t):
        """Mean cross-entropy loss of the batch."""
        y = self.predict(x)
        return self.last_layer.forward(y, t)

    def accuracy(self, x, t, batch_size=100):
        """Fraction of correctly classified images."""
        if t.ndim != 1:
            t = np.argmax(t, axis=1)
        correct = 0
        for i in range(0, x.shape[0], batch_size):
            y = self.predict(x[i:i + batch_size])
            correct += int(np.sum(np.argmax(y, axis=1) == t[i:i + batch_size]))
        return correct / x.shape[0]

    def gradient(self, x, t):
        """Backprop: forward, loss, then backward through every layer."""
        self.loss(x, t)

        dout = self.last_layer.backward(1)
        for layer in reversed(list(self.layers.values())):
            dout = layer.backward(dout)

        grads = {}
        for i, name in enumerate(("Conv1", "Affine1", "Affine2"), start=1):
            grads[f"W{i}"] = self.layers[name].dW
            grads[f"b{i}"] = self.layers[name].db
        return grads


class Adam:
    """Adam as the book writes it: bias correction folded into the step size.

    Per ``update``, with ``iter`` counting the calls::

        lr_t = lr * sqrt(1 - beta2**iter) / (1 - beta1**iter)
        m   += (1 - beta1) * (g - m)
        v   += (1 - beta2) * (g**2 - v)
        p   -= lr_t * m / (sqrt(v) + 1e-7)

    ``m`` and ``v`` start at zero, in each parameter's dtype; the parameters are updated
    in place (the layers hold the same arrays). ``lr_t`` is a Python float, so float32
    parameters are updated in float32.
    """

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999):
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.iter = 0
        self.m = None
        self.v = None

    def update(self, params, grads):
        """One step on every parameter of ``params`` (name -> array), given ``grads`` (same names)."""
        if self.m is None:
            self.m = {key: np.zeros_like(value) for key, value in params.items()}
            self.v = {key: np.zeros_like(value) for key, value in params.items()}

        self.iter += 1
        lr_t = self.lr * math.sqrt(1.0 - self.beta2 ** self.iter) / (1.0 - self.beta1 ** self.iter)

        for key in params:
            g = grads[key]
            self.m[key] += (1 - self.beta1) * (g - self.m[key])
            self.v[key] += (1 - self.beta2) * (g ** 2 - self.v[key])
            params[key] -= lr_t * self.m[key] / (np.sqrt(self.v[key]) + 1e-7)
