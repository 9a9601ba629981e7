"""A trained model as a product: whole-model files (load_model), the predict API (one
sample, uint8, channels-last), ``xpconv evaluate``/``predict``/``export``, ONNX and torch."""
from __future__ import annotations

import json

import numpy as np
import pytest

import xpconv
from tests.helpers import make_backend
from xpconv.cli import main as xpconv_main
from xpconv.model_io import load_model

SHAPE = (1, 20, 16)


def sequential(dtype="float32"):
    """Every layer type and the awkward options: asymmetric padding, average pooling without
    the padding, ceil rounding, BatchNormalization with trained statistics, Dropout."""
    rng = np.random.default_rng(0)

    def a(v):
        return np.asarray(v, dtype=dtype)
    net = xpconv.Sequential([
        ("Conv1", xpconv.Convolution(a(0.3 * rng.standard_normal((4, 1, 3, 3))), a(np.zeros(4)),
                                     pad=((1, 0), (2, 1)), rounding="floor")),
        ("BN1", xpconv.BatchNormalization(a(np.ones(4)), a(np.zeros(4)))),
        ("Relu1", xpconv.Relu()),
        ("Pool1", xpconv.Pooling(2, 2, mode="avg", rounding="floor", count_include_pad=False)),
        ("Pool2", xpconv.Pooling(3, 3, stride=2, pad=1, rounding="ceil")),
        ("Flatten", xpconv.Flatten()),
        ("Drop", xpconv.Dropout(0.2, seed=0)),
        ("Affine1", xpconv.Affine(a(0.1 * rng.standard_normal((100, 10))), a(np.zeros(10))))])
    x = rng.standard_normal((6, *SHAPE))
    net.gradient(x, np.arange(6))                    # running statistics move away from 0 and 1
    return net


MODELS = {
    "simple": lambda: xpconv.SimpleConvNet(input_dim=SHAPE, seed=1),
    "deep": lambda: xpconv.DeepConvNet(input_dim=SHAPE, hidden_size=20, seed=1),
    "lenet": lambda: xpconv.LeNet(input_dim=SHAPE, output_size=7, pool="avg", activation="sigmoid", seed=1),
    "sequential": sequential,
}


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(5).standard_normal((5, *SHAPE)).astype(np.float32)


@pytest.mark.parametrize("name", MODELS)
def test_load_model_rebuilds_every_model_on_every_backend(tmp_path, backend, images, name):
    net = MODELS[name]()
    path = tmp_path / "model.npz"
    net.save_params(path)
    back = load_model(path, device=backend)
    assert type(back) is type(net) and list(back.layers) == list(net.layers)
    assert back.device == backend
    want = net.predict(images)
    got = xpconv.to_numpy(back.predict(backend.asarray(images)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    if backend.library == "numpy":
        np.testing.assert_array_equal(got, want)      # the same arrays and code: the same bits
    for key, value in net.state_arrays().items():
        np.testing.assert_array_equal(xpconv.to_numpy(back.state_arrays()[key]), value)


def test_a_file_without_architecture_names_load_params(tmp_path):
    from xpconv.serialization import save_arrays
    net = xpconv.SimpleConvNet(seed=0)
    save_arrays(tmp_path / "old.npz", net.state_arrays(), metadata={"format": "xpconv-params", "version": "1",
                                                                    "model": "SimpleConvNet"})
    with pytest.raises(ValueError, match=r"no architecture .* SimpleConvNet .*load_params\("):
        load_model(tmp_path / "old.npz")
    assert xpconv.SimpleConvNet(seed=1).load_params(tmp_path / "old.npz") is not None


def test_one_sample_uint8_and_channels_last_follow_one_rule(images):
    net = MODELS["simple"]()
    batch = net.predict(images)
    assert net.predict(images[0]).shape == (10,)
    # a batch of one is another GEMM than a batch of five: equal up to rounding
    np.testing.assert_allclose(net.predict(images[0]), batch[0], rtol=1e-5, atol=1e-8)
    np.testing.assert_array_equal(net.predict(images[0, 0]), net.predict(images[:1])[0])   # (H, W)
    proba = xpconv.to_numpy(net.predict_proba(images))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(xpconv.to_numpy(net.predict_classes(images)), batch.argmax(axis=1))
    assert int(net.predict_classes(images[2])) == batch[2].argmax()
    raw = np.random.default_rng(1).integers(0, 256, (3, *SHAPE), dtype=np.uint8)
    scaled = raw.astype(np.float32) / np.float32(255.0)          # what the data loaders do
    np.testing.assert_array_equal(net.predict(raw), net.predict(scaled))
    t = np.array([1, 2, 3])
    assert net.accuracy(raw, t) == net.accuracy(scaled, t) and float(net.loss(raw, t)) == float(net.loss(scaled, t))
    with pytest.raises(ValueError, match=r"looks channels-last \(N, H, W, C\).*transpose"):
        xpconv.SimpleConvNet(input_dim=(3, 20, 16), seed=0).predict(np.zeros((2, 20, 16, 3), np.float32))


def test_uint8_on_a_device_is_scaled_too():
    backend = make_backend("torch")
    net = xpconv.SimpleConvNet(input_dim=SHAPE, device=backend, seed=1)
    raw = np.random.default_rng(1).integers(0, 256, (2, *SHAPE), dtype=np.uint8)
    on_device = net.predict(backend.asarray(raw))
    np.testing.assert_array_equal(xpconv.to_numpy(on_device), xpconv.to_numpy(net.predict(raw)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "m.npz"
    rc = xpconv_main(["train", "--data", "mnist-bundled", "--limit", "600", "--epochs", "1", "--quiet",
                      "--save", str(path)])
    assert rc == 0
    return path


def test_evaluate_reports_accuracy_loss_per_class_and_confusion(trained, tmp_path, capsys):
    from xpconv.datasets import load_evaluation_data
    out = tmp_path / "e.json"
    assert xpconv_main(["evaluate", str(trained), "--data", "mnist-bundled", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    x, t, _ = load_evaluation_data("mnist-bundled")
    net = load_model(trained)
    assert report["n"] == len(t) == 2000
    assert report["accuracy"] == pytest.approx(net.accuracy(x, t), abs=1e-12)
    confusion = np.array(report["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == 2000
    np.testing.assert_array_equal(confusion.sum(axis=1), np.bincount(t, minlength=10))     # rows: true class
    assert np.trace(confusion) == round(report["accuracy"] * 2000)
    recall3 = confusion[3, 3] / confusion[3].sum()
    assert report["per_class"][3]["recall"] == pytest.approx(recall3)
    assert report["loss"] == pytest.approx(float(net.loss(x, t, train_flg=False)), rel=1e-5)
    assert "accuracy" in capsys.readouterr().out


def test_predict_images_and_arrays_in_argument_order(trained, tmp_path, capsys):
    Image = pytest.importorskip("PIL.Image", reason="Pillow not installed (pip install 'xpconv[images]')")
    from xpconv.datasets import load_bundled_mnist
    (x, _), _ = load_bundled_mnist(flatten=False, normalize=False)
    Image.fromarray(x[0, 0]).save(tmp_path / "a.png")
    Image.fromarray(np.stack([x[1, 0]] * 3, axis=-1)).save(tmp_path / "b.jpg", quality=100)   # RGB -> gray
    Image.fromarray(x[2, 0]).resize((40, 40)).save(tmp_path / "big.png")
    np.save(tmp_path / "c.npy", x[3:5])
    out = tmp_path / "p.json"
    files = [str(tmp_path / n) for n in ("a.png", "b.jpg", "c.npy")]
    assert xpconv_main(["predict", str(trained), *files, "--top", "3", "--json", str(out)]) == 0
    records = json.loads(out.read_text())["predictions"]
    assert [r["file"] for r in records] == [files[0], files[1], files[2] + "[0]", files[2] + "[1]"]
    net = load_model(trained)
    want = xpconv.to_numpy(net.predict_proba(x[[0, 3, 4]]))
    for record, row in zip([records[0], records[2], records[3]], want):
        np.testing.assert_allclose(record["probabilities"], row, rtol=1e-6)
        assert record["class"] == int(row.argmax())
    capsys.readouterr()
    assert xpconv_main(["predict", str(trained), str(tmp_path / "big.png")]) == 1
    assert "40x40 pixels; the model takes 28x28 (use --resize)" in capsys.readouterr().err
    assert xpconv_main(["predict", str(trained), str(tmp_path / "big.png"), "--resize"]) == 0
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    capsys.readouterr()
    assert xpconv_main(["predict", str(trained), str(tmp_path / "bad.png")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.png: not a readable image" in err[0]


@pytest.mark.parametrize("name", MODELS)
def test_onnx_export_matches_predict(tmp_path, images, name):
    pytest.importorskip("onnx", reason="onnx not installed (pip install 'xpconv[export]')")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    from xpconv.export import to_onnx
    net = MODELS[name]()
    to_onnx(net, tmp_path / "m.onnx", input_shape=SHAPE)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    for batch in (images, images[:1]):                         # the batch size is dynamic
        got = session.run(None, {"x": batch})[0]
        want = net.predict(batch)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("name", MODELS)
def test_to_torch_matches_predict(images, name):
    torch = pytest.importorskip("torch", reason="torch not installed")
    from xpconv.export import to_torch
    net = MODELS[name]()
    module = to_torch(net, input_shape=SHAPE)
    with torch.no_grad():
        got = module(torch.from_numpy(images)).numpy()
    want = net.predict(images)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_export_command_writes_a_checked_onnx_file(trained, tmp_path):
    onnx = pytest.importorskip("onnx", reason="onnx not installed (pip install 'xpconv[export]')")
    out = tmp_path / "m.onnx"
    assert xpconv_main(["export", str(trained), str(out)]) == 0
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


def test_a_folder_trained_model_keeps_its_class_names(tmp_path, capsys):
    Image = pytest.importorskip("PIL.Image", reason="Pillow not installed (pip install 'xpconv[images]')")
    rng = np.random.default_rng(3)
    for name, level in (("rose", 60), ("tulip", 190)):
        folder = tmp_path / "flowers" / name
        folder.mkdir(parents=True)
        for i in range(10):
            pixels = np.clip(rng.normal(level, 30, (12, 12)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    model = tmp_path / "m.npz"
    assert xpconv_main(["train", "--data", str(tmp_path / "flowers"), "--epochs", "1", "--quiet", "--model", "lenet",
                        "--save", str(model)]) == 0
    assert load_model(model).class_names == ["rose", "tulip"]
    out = tmp_path / "p.json"
    assert xpconv_main(["predict", str(model), str(tmp_path / "flowers" / "rose" / "0.png"), "--json", str(out)]) == 0
    record = json.loads(out.read_text())["predictions"][0]
    assert record["name"] == ["rose", "tulip"][record["class"]]
    assert f"({record['name']})" in capsys.readouterr().out


def test_evaluate_refuses_labels_the_model_cannot_predict(tmp_path, capsys):
    net = xpconv.LeNet(input_dim=SHAPE, output_size=3, seed=0)
    net.save_params(tmp_path / "m.npz")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((6, *SHAPE)).astype(np.float32), t=np.array([0, 1, 2, 3, 4, 1]))
    assert xpconv_main(["evaluate", str(tmp_path / "m.npz"), "--data", str(tmp_path / "d.npz")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "labels must be 0..2 for this 3-class model; got 0..4" in err[0]
