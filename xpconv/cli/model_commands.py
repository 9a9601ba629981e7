"""After training: ``xpconv evaluate``, ``xpconv predict`` and ``xpconv export``."""
from __future__ import annotations

import json
from pathlib import Path

from .common import check_writable, positive_int


def add_parsers(sub) -> None:
    """Add the model commands (``evaluate``, ``predict``, ``export``) to the subparsers ``sub``."""
    e = sub.add_parser("evaluate", help="accuracy, loss, per-class scores and confusion of a saved model",
                       description="Evaluate a model file (xpconv train --save) on labelled data: "
                                   "accuracy, mean loss, per-class precision/recall/F1, the confusion "
                                   "matrix (rows: true class).")
    e.add_argument("model", metavar="MODEL", help="a model file written by --save / save_params")
    e.add_argument("--data", default="mnist-bundled",
                   help="mnist, mnist-bundled, fashion-mnist, cifar10, PATH.npz (x_test/t_test, or x/t "
                        "whole) or DIR (class folders); default: mnist-bundled")
    e.add_argument("--device", default="cpu", help="cpu (default), cuda, torch, jax, ...")
    e.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    e.add_argument("--plot", metavar="PNG", help="draw the confusion matrix (matplotlib)")
    e.add_argument("--misclassified", metavar="PNG", help="draw the misclassified images (matplotlib)")
    e.set_defaults(run=_evaluate)

    p = sub.add_parser("predict", help="classify images or .npy arrays with a saved model",
                       description="Print one line per file: file, class, probability. Images "
                                   "(PNG/JPEG; Pillow) are converted to the model's channels; 8-bit "
                                   "data is scaled by 1/255; .npy arrays are taken as they are.")
    p.add_argument("model", metavar="MODEL", help="a model file written by --save / save_params")
    p.add_argument("files", metavar="FILE", nargs="+", help="images or .npy arrays")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, torch, jax, ...")
    p.add_argument("--top", type=positive_int, default=1, metavar="K", help="print the K likeliest classes")
    p.add_argument("--resize", action="store_true", help="resize images to the model's input size")
    p.add_argument("--json", metavar="PATH", help="also write the predictions as JSON here")
    p.add_argument("--input-shape", type=positive_int, nargs=3, metavar=("C", "H", "W"),
                   help="the input size of a Sequential model (the book's networks record theirs)")
    p.set_defaults(run=_predict)

    x = sub.add_parser("export", help="write a saved model as ONNX (python -m pip install \".[export]\")",
                       description="Write the inference network of a model file as ONNX (float32, "
                                   "dynamic batch size; output: the scores predict returns).")
    x.add_argument("model", metavar="MODEL", help="a model file written by --save / save_params")
    x.add_argument("out", metavar="OUT.onnx", help="the ONNX file to write")
    x.add_argument("--input-shape", type=positive_int, nargs=3, metavar=("C", "H", "W"),
                   help="the input size of a Sequential model (the book's networks record theirs)")
    x.set_defaults(run=_export)


def _load(path, device="cpu"):
    from ..model_io import load_model
    return load_model(path, device=device)


def _evaluate(args) -> int:
    from ..datasets import load_evaluation_data
    from ..metrics import evaluate
    for option in ("json", "plot", "misclassified"):
        if getattr(args, option):
            check_writable(getattr(args, option), option=f"--{option}")
    net = _load(args.model, args.device)
    x, t, classes = load_evaluation_data(args.data, keep_dtype=True)   # uint8 scaled per batch
    classes = classes or getattr(net, "class_names", None)
    result, probs = evaluate(net, x, t, classes=classes)
    print(f"{args.model} on {args.data}:")
    print(result.format())
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=1))
        print(f"wrote {args.json}")
    if args.plot:
        from ..plot import save_confusion
        save_confusion(result.confusion, args.plot, classes=classes)
        print(f"wrote {args.plot}")
    if args.misclassified:
        from ..plot import save_misclassified
        wrong = (probs.argmax(axis=1) != t).nonzero()[0]
        save_misclassified(x, t, probs, wrong, args.misclassified)
        print(f"wrote {args.misclassified}: {min(len(wrong), 40)} of {len(wrong)} misclassified images")
    return 0


def _predict(args) -> int:
    import numpy as np

    from ..devices import to_numpy
    from ..images import read_input
    if args.json:
        check_writable(args.json, option="--json")
    net = _load(args.model, args.device)
    channels, h, w = _input_shape(net, args)
    records = []
    for path in args.files:
        x = read_input(path, channels, (h, w), resize=args.resize)
        probs = to_numpy(net.predict_proba(x)).astype(np.float64)
        for i, row in enumerate(probs):
            name = path if len(probs) == 1 else f"{path}[{i}]"
            best = np.argsort(-row, kind="stable")[:args.top]
            print(name + "  " + "  ".join(f"{_label(net, int(k))} ({row[k]:.4f})" for k in best))
            record = {"file": name, "class": int(best[0]), "probabilities": [float(v) for v in row]}
            if getattr(net, "class_names", None):
                record["name"] = net.class_names[int(best[0])]
            records.append(record)
    if args.json:
        Path(args.json).write_text(json.dumps({"predictions": records}, indent=1))
        print(f"wrote {args.json}")
    return 0


def _label(net, k: int) -> str:
    """``class 3``, or ``class 3 (rose)`` for a model that knows its class names."""
    names = getattr(net, "class_names", None)
    return f"class {k} ({names[k]})" if names else f"class {k}"


def _export(args) -> int:
    from ..export import to_onnx
    check_writable(args.out, option="OUT")
    net = _load(args.model)
    shape = _input_shape(net, args)
    to_onnx(net, args.out, input_shape=shape)
    print(f"wrote {args.out}: {type(net).__name__}, input x (N, {', '.join(map(str, shape))}) float32, "
          f"output scores (N, K)")
    return 0


def _input_shape(net, args) -> tuple[int, int, int]:
    config = getattr(net, "_config", None) or {}
    if args.input_shape:
        return tuple(args.input_shape)
    if "input_dim" in config:
        return tuple(config["input_dim"])
    raise ValueError(f"{args.model}: this model does not record its input size; give --input-shape C H W")
