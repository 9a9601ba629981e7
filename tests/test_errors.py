"""Bad inputs: each raises the right exception type, naming the op or layer and the bad value."""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import xpconv
from tests.helpers import make_backend
from xpconv import functional as F


def ones(*shape, dtype="float64"):
    return np.ones(shape, dtype=dtype)


X = ones(2, 3, 7, 7)      # (N, C, H, W)
W = ones(4, 3, 3, 3)      # (FN, C, FH, FW)
B = ones(4)


def esc(value) -> str:
    return re.escape(str(value))


# ----------------------------------------------------------------------------- ranks

def test_conv2d_x_wrong_ndim():
    with pytest.raises(ValueError, match=r"conv2d: expected x of shape \(N, C, H, W\).*" + esc((3, 7, 7))):
        F.conv2d(ones(3, 7, 7), W)


def test_conv2d_w_wrong_ndim():
    with pytest.raises(ValueError, match=r"conv2d: expected w .*" + esc((4, 3, 3))):
        F.conv2d(X, ones(4, 3, 3))


def test_convolution_layer_W_wrong_ndim():
    with pytest.raises(ValueError, match=r"Convolution: expected W .*" + esc((4, 27))):
        xpconv.Convolution(ones(4, 27), B)


def test_conv2d_backward_dy_wrong_ndim():
    with pytest.raises(ValueError, match=r"conv2d_backward: expected dy of shape \(2, 4, 5, 5\).*"
                                         + esc((2, 4, 25))):
        F.conv2d_backward(ones(2, 4, 25), X, W)


def test_conv2d_backward_dy_wrong_shape():
    with pytest.raises(ValueError, match=r"conv2d_backward: expected dy .*" + esc((2, 4, 6, 6))):
        F.conv2d_backward(ones(2, 4, 6, 6), X, W)


def test_max_pool2d_x_wrong_ndim():
    with pytest.raises(ValueError, match=r"max_pool2d: expected x .*" + esc((7, 7))):
        F.max_pool2d(ones(7, 7), 2)


def test_avg_pool2d_backward_dy_wrong_ndim():
    with pytest.raises(ValueError, match=r"avg_pool2d_backward: expected dy .*" + esc((2, 3, 49))):
        F.avg_pool2d_backward(ones(2, 3, 49), X, 7)


def test_layer_backward_dout_wrong_shape():
    layer = xpconv.Pooling(7, 7)
    layer.forward(X)
    with pytest.raises(ValueError, match=r"Pooling.backward: expected dy .*" + esc((2, 3, 2, 2))):
        layer.backward(ones(2, 3, 2, 2))


# ----------------------------------------------------------------------------- channels and groups

def test_conv2d_channel_mismatch():
    with pytest.raises(ValueError, match=r"conv2d: channel mismatch: x has C=3.*" + esc((4, 2, 3, 3))):
        F.conv2d(X, ones(4, 2, 3, 3))


def test_conv2d_channel_mismatch_with_groups():
    # C=4, groups=2 needs W of shape (FN, 2, FH, FW); (4, 4, 3, 3) is the groups=1 shape
    with pytest.raises(ValueError, match=r"conv2d: channel mismatch.*C=4.*" + esc((4, 4, 3, 3)) + ".*groups=2"):
        F.conv2d(ones(1, 4, 5, 5), ones(4, 4, 3, 3), groups=2)


def test_convolution_layer_forward_channel_mismatch():
    layer = xpconv.Convolution(W, B)
    with pytest.raises(ValueError, match=r"Convolution: channel mismatch: x has C=5"):
        layer.forward(ones(1, 5, 7, 7))


def test_conv2d_groups_not_dividing_C():
    with pytest.raises(ValueError, match=r"conv2d: groups=2 .*C=3"):
        F.conv2d(X, ones(4, 1, 3, 3), groups=2)


def test_conv2d_groups_not_dividing_FN():
    with pytest.raises(ValueError, match=r"conv2d: groups=2 .*FN=3"):
        F.conv2d(ones(1, 4, 5, 5), ones(3, 2, 3, 3), groups=2)


@pytest.mark.parametrize("groups", [0, -1])
def test_conv2d_groups_below_one(groups):
    with pytest.raises(ValueError, match=rf"conv2d: expected groups >= 1; got {groups}"):
        F.conv2d(X, W, groups=groups)


def test_convolution_layer_groups_below_one():
    with pytest.raises(ValueError, match=r"Convolution: expected groups >= 1; got 0"):
        xpconv.Convolution(W, B, groups=0)


def test_conv2d_groups_not_int():
    with pytest.raises(TypeError, match=r"conv2d: expected groups to be an int; got 1.5"):
        F.conv2d(X, W, groups=1.5)


@pytest.mark.parametrize("shape", [(3,), (4, 1), (1, 4)], ids=["3", "4x1", "1x4"])
def test_conv2d_bias_wrong_shape(shape):
    with pytest.raises(ValueError, match=r"conv2d: expected b of shape \(FN,\) = \(4,\); got " + esc(shape)):
        F.conv2d(X, W, ones(*shape))


def test_convolution_layer_bias_wrong_shape():
    with pytest.raises(ValueError, match=r"Convolution: expected b .*got " + esc((5,))):
        xpconv.Convolution(W, ones(5))


# ----------------------------------------------------------------------------- geometry

def test_conv2d_kernel_larger_than_padded_input():
    with pytest.raises(ValueError, match=r"conv2d: kernel 9 is larger than the padded input height 7 \+ 0 \+ 0 = 7"):
        F.conv2d(X, ones(4, 3, 9, 9))


def test_conv2d_dilated_kernel_larger_than_padded_input():
    with pytest.raises(ValueError, match=r"conv2d: kernel 3 \(dilated to 9\) is larger .*7 \+ 0 \+ 0 = 7"):
        F.conv2d(X, W, dilation=4)


def test_max_pool2d_kernel_larger_than_input():
    with pytest.raises(ValueError, match=r"max_pool2d: kernel 8 is larger .* 7"):
        F.max_pool2d(X, 8)


@pytest.mark.parametrize("stride", [0, -1, (1, 0)], ids=["0", "-1", "(1,0)"])
def test_conv2d_stride_below_one(stride):
    with pytest.raises(ValueError, match=r"conv2d: expected stride >= 1; got " + esc(stride)):
        F.conv2d(X, W, stride=stride)


def test_pooling_layer_stride_below_one():
    with pytest.raises(ValueError, match=r"Pooling: expected stride >= 1; got 0"):
        xpconv.Pooling(2, 2, stride=0)


@pytest.mark.parametrize("dilation", [0, (2, 0)], ids=["0", "(2,0)"])
def test_conv2d_dilation_below_one(dilation):
    with pytest.raises(ValueError, match=r"conv2d: expected dilation >= 1; got " + esc(dilation)):
        F.conv2d(X, W, dilation=dilation)


def test_convolution_layer_dilation_below_one():
    with pytest.raises(ValueError, match=r"Convolution: expected dilation >= 1; got 0"):
        xpconv.Convolution(W, B, dilation=0)


@pytest.mark.parametrize("pad", [-1, (0, -1), ((0, 0), (1, -2))], ids=["int", "hw", "tblr"])
def test_conv2d_negative_padding(pad):
    with pytest.raises(ValueError, match=r"conv2d: expected padding >= 0; got " + esc(pad)):
        F.conv2d(X, W, pad=pad)


@pytest.mark.parametrize("pad", [(1, 2, 3), ((1, 2), 3), ((1, 2, 3), (0, 0)), 1.5, None, [1]],
                         ids=["triple", "mixed", "long-pair", "float", "None", "list1"])
def test_conv2d_malformed_pad(pad):
    with pytest.raises(TypeError, match=r"conv2d: expected pad to be an int.*got " + esc(repr(pad))):
        F.conv2d(X, W, pad=pad)


@pytest.mark.parametrize("pad", ["bogus", "SAME", ""])
def test_conv2d_unknown_pad_word(pad):
    with pytest.raises(ValueError, match=r"conv2d: expected pad .*got " + esc(repr(pad))):
        F.conv2d(X, W, pad=pad)


def test_conv2d_exact_rounding_does_not_tile():
    with pytest.raises(ValueError, match=r"conv2d: windows do not tile the input height.*"
                                         r"\(7 \+ 0 - 3\) / 3.*not an integer.*'floor'"):
        F.conv2d(X, W, stride=3)


def test_max_pool2d_exact_rounding_does_not_tile_mentions_floor_and_ceil():
    with pytest.raises(ValueError, match=r"max_pool2d: windows do not tile.*\(7 \+ 0 - 2\) / 2.*'floor'.*'ceil'"):
        F.max_pool2d(X, 2)


def test_im2col_exact_rounding_does_not_tile():
    with pytest.raises(ValueError, match=r"im2col: windows do not tile the input width.*\(6 \+ 2 - 3\) / 2.*'floor'"):
        F.im2col(ones(1, 1, 7, 6), 3, 3, stride=(2, 2), pad=1)


@pytest.mark.parametrize("rounding", ["ceil", "round", None])
def test_conv2d_rounding_refused(rounding):
    with pytest.raises(ValueError, match=r"conv2d: expected rounding in \('exact', 'floor'\); got " + esc(repr(rounding))):
        F.conv2d(X, W, rounding=rounding)


def test_convolution_layer_rounding_ceil_refused():
    with pytest.raises(ValueError, match=r"Convolution: expected rounding .*got 'ceil'"):
        xpconv.Convolution(W, B, rounding="ceil")


def test_pool_rounding_invalid():
    with pytest.raises(ValueError, match=r"avg_pool2d: expected rounding in .*got 'up'"):
        F.avg_pool2d(X, 7, rounding="up")


@pytest.mark.parametrize("pad", [2, (0, 2), ((0, 2), (0, 0))], ids=["int", "hw", "tblr"])
def test_pooling_pad_more_than_half_kernel(pad):
    with pytest.raises(ValueError, match=r"max_pool2d: pooling padding must be at most half the kernel.*"
                                         r"kernel 3, so pad <= 1.*got \(\d, 2\)"):
        F.max_pool2d(X, 3, stride=1, pad=pad)


def test_pooling_layer_pad_more_than_half_kernel():
    # refused at construction (the kernel is known), not at the first forward
    with pytest.raises(ValueError, match=r"Pooling: pooling padding must be at most half .*got \(2, 2\)"):
        xpconv.Pooling(2, 2, pad=2)


@pytest.mark.parametrize("mode", ["min", "MAX", None])
def test_pooling_mode_invalid(mode):
    with pytest.raises(ValueError, match=r"Pooling: expected mode in \('max', 'avg'\); got " + esc(repr(mode))):
        xpconv.Pooling(2, 2, mode=mode)


def test_pooling_layer_rounding_invalid():
    with pytest.raises(ValueError, match=r"Pooling: expected rounding .*got 'nearest'"):
        xpconv.Pooling(2, 2, rounding="nearest")


@pytest.mark.parametrize("k", [2.5, "2", (2, 2, 2), True, (2, None), [3]],
                         ids=["float", "str", "triple", "bool", "None-item", "list1"])
def test_pool_bad_kernel_size_type(k):
    with pytest.raises(TypeError, match=r"max_pool2d: expected kernel_size to be an int or a pair.*got "
                                        + esc(repr(k))):
        F.max_pool2d(X, k)


@pytest.mark.parametrize("k", [0, (2, 0)], ids=["0", "(2,0)"])
def test_pool_kernel_size_below_one(k):
    with pytest.raises(ValueError, match=r"avg_pool2d: expected kernel_size >= 1; got " + esc(k)):
        F.avg_pool2d(X, k)


def test_pooling_layer_bad_pool_size():
    with pytest.raises(TypeError, match=r"Pooling: expected pool size .*got \(2\.0, 2\)"):
        xpconv.Pooling(2.0, 2)


def test_im2col_bad_filter_size():
    with pytest.raises(TypeError, match=r"im2col: expected kernel size .*got \(3, '3'\)"):
        F.im2col(X, 3, "3")


def test_col2im_wrong_col_shape():
    col = F.im2col(X, 3, 3)          # (2*5*5, 3*9)
    with pytest.raises(ValueError, match=r"col2im: expected col of shape \(50, 27\).*got \(50, 26\)"):
        F.col2im(col[:, :26], X.shape, 3, 3)


def test_col2im_wrong_col_ndim():
    with pytest.raises(ValueError, match=r"col2im: expected col .*got shape \(1350,\)"):
        F.col2im(ones(1350), X.shape, 3, 3)


@pytest.mark.parametrize("shape", [(2, 3, 7), (2, 3, 7, -1), (2, 3, 7.0, 7)], ids=["3d", "negative", "float"])
def test_col2im_bad_input_shape(shape):
    with pytest.raises(ValueError, match=r"col2im: expected input_shape .*got " + esc(shape)):
        F.col2im(ones(50, 27), shape, 3, 3)


# ----------------------------------------------------------------------------- types, libraries, devices

@pytest.mark.parametrize("dtype", ["int64", "int32", "bool"])
def test_conv2d_non_float_x(dtype):
    with pytest.raises(TypeError, match=rf"conv2d: expected x with a floating-point dtype.*got {dtype}"):
        F.conv2d(X.astype(dtype), W)


@pytest.mark.parametrize("dtype", ["int64", "bool"])
def test_conv2d_non_float_w(dtype):
    with pytest.raises(TypeError, match=rf"conv2d: expected w with a floating-point dtype.*got {dtype}"):
        F.conv2d(X, W.astype(dtype))


@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d"])
@pytest.mark.parametrize("dtype", ["int64", "bool"])
def test_pool_non_float_x(op, dtype):
    with pytest.raises(TypeError, match=rf"{op}: expected x with a floating-point dtype.*got {dtype}"):
        getattr(F, op)(X.astype(dtype), 7)


def test_im2col_integer_x():
    with pytest.raises(TypeError, match=r"im2col: expected x with a floating-point dtype.*got int64"):
        F.im2col(X.astype("int64"), 3, 3)


def test_col2im_integer_col():
    with pytest.raises(TypeError, match=r"col2im: expected col with a floating-point dtype.*got int64"):
        F.col2im(ones(50, 27, dtype="int64"), X.shape, 3, 3)


def test_convolution_layer_integer_W():
    with pytest.raises(TypeError, match=r"Convolution: expected W with a floating-point dtype.*got int64"):
        xpconv.Convolution(W.astype("int64"), B)


def test_conv2d_backward_integer_dy():
    with pytest.raises(TypeError, match=r"conv2d_backward: expected dy with a floating-point.*got int64"):
        F.conv2d_backward(ones(2, 4, 5, 5, dtype="int64"), X, W)


@pytest.mark.parametrize("bad", [X.tolist(), 3.0, None], ids=["list", "float", "None"])
def test_conv2d_non_array_x(bad):
    with pytest.raises(TypeError, match=r"conv2d: expected x to be an array .*got " + type(bad).__name__):
        F.conv2d(bad, W)


def test_max_pool2d_non_array_x():
    with pytest.raises(TypeError, match=r"max_pool2d: expected x to be an array .*got list"):
        F.max_pool2d(X.tolist(), 2)


def test_convolution_layer_forward_list():
    layer = xpconv.Convolution(W, B)
    with pytest.raises(TypeError, match=r"Convolution: expected x to be an array .*got list"):
        layer.forward(X.tolist())


def test_convolution_layer_bias_none():
    with pytest.raises(TypeError, match=r"Convolution: expected b .*got None"):
        xpconv.Convolution(W, None)


def test_conv2d_mixed_libraries():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    with pytest.raises(TypeError, match=r"conv2d: w is a torch array but x is a numpy array.*"
                                        r"xpconv\.device.*to_numpy"):
        F.conv2d(X, torch.ones(4, 3, 3, 3, dtype=torch.float64))


def test_conv2d_mixed_libraries_bias():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    with pytest.raises(TypeError, match=r"conv2d: b is a numpy array but x is a torch array"):
        F.conv2d(torch.ones(2, 3, 7, 7, dtype=torch.float64), torch.ones(4, 3, 3, 3, dtype=torch.float64), B)


def test_convolution_layer_mixed_libraries():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    layer = xpconv.Convolution(W, B)
    with pytest.raises(TypeError, match=r"Convolution: [wW] is a numpy array but x is a torch array"):
        layer.forward(torch.ones(2, 3, 7, 7, dtype=torch.float64))


def test_conv2d_different_devices():
    cpu, dev1 = make_backend("array_api_strict"), make_backend("array_api_strict:device1")
    x = cpu.asarray(X, dtype="float64")
    w = dev1.asarray(W, dtype="float64")
    with pytest.raises(ValueError, match=r"conv2d: w is on device .*device1.* but x is on .*CPU_DEVICE"):
        F.conv2d(x, w)


def test_max_pool2d_backward_dy_on_other_device():
    cpu, dev1 = make_backend("array_api_strict"), make_backend("array_api_strict:device1")
    x = dev1.asarray(X, dtype="float64")
    dy = cpu.asarray(ones(2, 3, 1, 1), dtype="float64")
    with pytest.raises(ValueError, match=r"max_pool2d_backward: dy is on device .*CPU_DEVICE.*device1"):
        F.max_pool2d_backward(dy, x, 7)


@pytest.mark.parametrize("culprit", ["w", "b"])
def test_conv2d_dtype_mismatch(culprit):
    w = W.astype("float32") if culprit == "w" else W
    b = B.astype("float32") if culprit == "b" else B
    with pytest.raises(TypeError, match=rf"conv2d: {culprit} has dtype float32 but x has float64"):
        F.conv2d(X, w, b)


def test_conv2d_backward_dy_dtype_mismatch():
    with pytest.raises(TypeError, match=r"conv2d_backward: dy has dtype float32 but x has float64"):
        F.conv2d_backward(ones(2, 4, 5, 5, dtype="float32"), X, W)


# ----------------------------------------------------------------------------- networks: where arrays live

def test_model_input_of_another_library_is_shared_or_refused_naming_both_places():
    """A torch CPU tensor feeds a NumPy model through DLPack (the same predictions as NumPy
    input); a tensor on a device the model cannot reach is refused, naming both places."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    net = xpconv.SimpleConvNet(seed=0)
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    np.testing.assert_array_equal(net.predict(torch.from_numpy(x)), net.predict(x))
    assert float(net.loss(torch.from_numpy(x), torch.tensor([1, 2]))) == float(net.loss(x, np.array([1, 2])))
    with pytest.raises((ValueError, TypeError), match=r"meta"):
        net.predict(torch.zeros(1, 1, 28, 28, device="meta"))


def test_model_parameters_on_two_libraries_name_both_libraries():
    """Was "parameter 'b.W' is on cpu but the first parameter is on cpu"."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    layers = [("a", xpconv.Affine(ones(2, 2, dtype="float32"), ones(2, dtype="float32"))),
              ("b", xpconv.Affine(torch.ones(2, 2), torch.ones(2)))]
    with pytest.raises(ValueError, match=r"Sequential: parameter 'b.W' is on torch:cpu but the first "
                                         r"parameter, 'a.W', is on cpu \(numpy\)"):
        xpconv.Sequential(layers)


# ----------------------------------------------------------------------------- layer constructors

@pytest.mark.parametrize("groups", [np.int64(1), np.int32(1), np.uint8(1)], ids=["int64", "int32", "uint8"])
def test_convolution_layer_accepts_numpy_integer_groups(groups):
    layer = xpconv.Convolution(W, B, groups=groups)
    assert layer.groups == 1 and type(layer.groups) is int
    assert layer.forward(X).shape == (2, 4, 5, 5)


def test_convolution_layer_numpy_integer_groups_depthwise():
    layer = xpconv.Convolution(ones(3, 1, 3, 3), ones(3), groups=np.int64(3))
    np.testing.assert_allclose(layer.forward(X), F.conv2d(X, ones(3, 1, 3, 3), ones(3), groups=3))


@pytest.mark.parametrize("groups", [1.0, True, "1", None], ids=["float", "bool", "str", "None"])
def test_convolution_layer_groups_not_int(groups):
    with pytest.raises(TypeError, match=r"Convolution: expected groups to be an int; got " + esc(repr(groups))):
        xpconv.Convolution(W, B, groups=groups)


@pytest.mark.parametrize("pad, error", [(-1, ValueError), ((1, 2, 3), TypeError), (1.5, TypeError),
                                        ("bogus", ValueError), (None, TypeError)],
                         ids=["negative", "triple", "float", "word", "None"])
def test_convolution_layer_pad_checked_at_construction(pad, error):
    with pytest.raises(error, match=r"Convolution: expected pad"):
        xpconv.Convolution(W, B, pad=pad)


@pytest.mark.parametrize("pad, error", [(-1, ValueError), (((0, 0), (0, 1, 2)), TypeError),
                                        ("bogus", ValueError)], ids=["negative", "malformed", "word"])
def test_pooling_layer_pad_checked_at_construction(pad, error):
    with pytest.raises(error, match=r"Pooling: expected pad"):
        xpconv.Pooling(3, 3, pad=pad)


@pytest.mark.parametrize("flag", ["False", "yes", 1, 0, None, np.bool_(True)],
                         ids=["str-False", "str-yes", "1", "0", "None", "numpy-bool"])
def test_convolution_layer_input_grad_must_be_bool(flag):
    with pytest.raises(TypeError, match=r"Convolution: expected input_grad to be True or False; got "
                                        + esc(repr(flag))):
        xpconv.Convolution(W, B, input_grad=flag)


@pytest.mark.parametrize("flag", ["False", 1, None], ids=["str-False", "1", "None"])
def test_pooling_layer_count_include_pad_must_be_bool(flag):
    with pytest.raises(TypeError, match=r"Pooling: expected count_include_pad to be True or False; got "
                                        + esc(repr(flag))):
        xpconv.Pooling(2, 2, mode="avg", count_include_pad=flag)


@pytest.mark.parametrize("ratio", [np.float32(0.25), np.float64(0.25), 0, 1])
def test_dropout_accepts_real_numbers(ratio):
    assert xpconv.Dropout(ratio, seed=0).dropout_ratio == float(ratio)


@pytest.mark.parametrize("ratio", [float("nan"), -0.1, 1.5, True, "0.5", None])
def test_dropout_ratio_refused(ratio):
    with pytest.raises(ValueError, match=r"Dropout: expected dropout_ratio in \[0, 1\]"):
        xpconv.Dropout(ratio, seed=0)


# ----------------------------------------------------------------------------- model constructors

MODELS = [xpconv.SimpleConvNet, xpconv.DeepConvNet, xpconv.LeNet]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("input_dim", [(28, 28), (1, 28, 28, 1), 28, "1x28x28"],
                         ids=["HW", "4-D", "int", "str"])
def test_model_input_dim_must_be_CHW(model, input_dim):
    with pytest.raises(ValueError, match=model.__name__ + r": expected input_dim \(C, H, W\) of one image.*"
                                         + esc(repr(input_dim))):
        model(input_dim=input_dim, seed=0)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("input_dim, error", [((0, 28, 28), ValueError), ((1, 28.0, 28), TypeError)],
                         ids=["zero-channels", "float-H"])
def test_model_input_dim_entries_checked(model, input_dim, error):
    with pytest.raises(error, match=model.__name__ + r": expected input_dim\[\d\]"):
        model(input_dim=input_dim, seed=0)


def test_model_input_dim_accepts_numpy_integers():
    net = xpconv.SimpleConvNet(input_dim=tuple(np.array([1, 8, 8])), conv_param={"filter_size": 3},
                               hidden_size=4, output_size=np.int64(3), seed=0)
    assert net.predict(np.zeros((2, 1, 8, 8))).shape == (2, 3)


@pytest.mark.parametrize("std", [float("nan"), float("inf"), -0.01, 0.0, True, "kaiming", None, np.nan],
                         ids=["nan", "inf", "negative", "zero", "bool", "unknown-word", "None", "np.nan"])
def test_simple_convnet_weight_init_std_refused(std):
    with pytest.raises(ValueError, match=r"SimpleConvNet: expected weight_init_std to be a finite number > 0, "
                                         r"'he' or 'xavier'; got " + esc(repr(std))):
        xpconv.SimpleConvNet(weight_init_std=std, seed=0)


@pytest.mark.parametrize("std", [0.01, np.float32(0.01), "he", "Xavier", 1])
def test_simple_convnet_weight_init_std_accepted(std):
    net = xpconv.SimpleConvNet(input_dim=(1, 8, 8), hidden_size=4, weight_init_std=std, seed=0)
    assert all(np.isfinite(xpconv.to_numpy(net.params[k])).all() for k in net.params)


def test_simple_convnet_unknown_conv_param_key():
    with pytest.raises(ValueError, match=r"SimpleConvNet: unknown conv_param key\(s\) \['filter_nums'\]"):
        xpconv.SimpleConvNet(conv_param={"filter_nums": 8}, seed=0)


@pytest.mark.parametrize("key, value, error", [("filter_num", 0, ValueError), ("filter_size", 2.5, TypeError)])
def test_simple_convnet_conv_param_values(key, value, error):
    with pytest.raises(error, match=rf"SimpleConvNet: expected conv_param\['{key}'\]"):
        xpconv.SimpleConvNet(conv_param={key: value}, seed=0)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("size", [0, -3, 2.0, None], ids=["0", "negative", "float", "None"])
def test_model_output_size_checked(model, size):
    with pytest.raises((ValueError, TypeError), match=model.__name__ + r": expected output_size"):
        model(output_size=size, seed=0)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_model_dtype_must_be_floating(model):
    with pytest.raises(ValueError, match=model.__name__ + r": expected dtype in .*float32.*got 'int32'"):
        model(dtype="int32", seed=0)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("seed", [-1, 1.5, "0"], ids=["negative", "float", "str"])
def test_model_seed_checked(model, seed):
    with pytest.raises((ValueError, TypeError), match=model.__name__ + r": expected seed"):
        model(seed=seed)


def test_deep_convnet_conv_params_checked():
    with pytest.raises(TypeError, match=r"DeepConvNet: expected conv_params to be a non-empty list"):
        xpconv.DeepConvNet(conv_params=[], seed=0)
    with pytest.raises(ValueError, match=r"DeepConvNet: conv_params\[0\] needs the key\(s\) \['filter_num'\]"):
        xpconv.DeepConvNet(conv_params=[{"filter_size": 3}], seed=0)
    with pytest.raises(ValueError, match=r"DeepConvNet: unknown conv_params\[1\] key"):
        xpconv.DeepConvNet(conv_params=[{"filter_num": 4, "filter_size": 3}, {"filter_num": 4, "size": 3}], seed=0)


def test_lenet_pool_checked():
    with pytest.raises(ValueError, match=r"LeNet: expected pool 'max' or 'avg'; got 'min'"):
        xpconv.LeNet(pool="min", seed=0)


# ----------------------------------------------------------------------------- environment

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _import_with_env(value):
    env = {**os.environ, "XPCONV_WORKSPACE_MB": value}
    code = "import xpconv; print(xpconv.get_workspace_limit())"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("value", ["abc", "nan", "inf", "-inf", "-4", "0", "1e-9", "8 MiB"])
def test_bad_workspace_env_var_warns_and_uses_the_default(value):
    default = _import_with_env("").stdout.strip()   # empty: the default
    result = _import_with_env(value)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == default
    warning = [line for line in result.stderr.splitlines() if "XPCONV_WORKSPACE_MB" in line]
    assert warning, result.stderr
    assert repr(value) in warning[0] and "using the default workspace limit" in warning[0]


@pytest.mark.parametrize("value, nbytes", [("16", 16 * 2**20), ("0.5", 2**19), (" 2 ", 2 * 2**20)])
def test_workspace_env_var_sets_the_limit(value, nbytes):
    result = _import_with_env(value)
    assert result.returncode == 0 and result.stdout.strip() == str(nbytes), result.stderr
    assert "XPCONV_WORKSPACE_MB" not in result.stderr


# ----------------------------------------------------------------------------- host input of any layout

TINY_NET = dict(input_dim=(1, 6, 6), conv_param={"filter_num": 2, "filter_size": 3}, hidden_size=4,
                output_size=3, dtype="float64", seed=0)

ODD_LAYOUTS = {
    "negative-strides": lambda a: np.ascontiguousarray(a[::-1, :, :, ::-1])[::-1, :, :, ::-1],
    "big-endian": lambda a: a.astype(">f8"),
    "big-endian-negative-strides": lambda a: np.ascontiguousarray(a[::-1]).astype(">f8")[::-1],
    "big-endian-float32": lambda a: a.astype(">f4"),
    "fortran": np.asfortranarray,
}


@pytest.mark.parametrize("layout", ODD_LAYOUTS)
def test_models_accept_host_input_of_any_layout(backend, layout, rng):
    x = rng.standard_normal((3, 1, 6, 6))
    odd = ODD_LAYOUTS[layout](x)
    assert np.array_equal(odd, x.astype(odd.dtype))
    if "negative" in layout:
        assert min(odd.strides) < 0
    if "big-endian" in layout:
        assert not odd.dtype.isnative
    expected = xpconv.SimpleConvNet(**TINY_NET).predict(x.astype(odd.dtype).astype("float64"))
    net = xpconv.SimpleConvNet(**TINY_NET, device=backend)
    np.testing.assert_allclose(xpconv.to_numpy(net.predict(odd)), expected, rtol=1e-12)
    moved = backend.asarray(odd)
    np.testing.assert_array_equal(xpconv.to_numpy(moved), odd)
    assert xpconv.to_numpy(moved).dtype.isnative


@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
def test_complex_host_input_is_refused_not_truncated(backend, dtype):
    x = (np.ones((2, 1, 6, 6)) + 1j).astype(dtype)
    net = xpconv.SimpleConvNet(**TINY_NET, device=backend)
    with pytest.raises(TypeError, match=r"asarray: got complex data .*drop the imaginary part"):
        net.predict(x)
    with pytest.raises(TypeError, match=r"asarray: got complex data"):
        backend.asarray(x, dtype="float32")
