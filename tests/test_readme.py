"""The README's examples run as written, and it names the test command CI runs."""
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_run(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    accuracy = float(re.search(r"validation accuracy after 2 epochs: ([0-9.]+)", out).group(1))
    assert accuracy > 0.9
    assert "(8, 16, 16, 16)" in out


def test_readme_names_the_test_command_ci_runs():
    text = README.read_text()
    marker = text.index("<!-- test-command -->")
    assert 'python -m pip install ".[test]" && python -m pytest' in text[marker:marker + 120]


def test_readme_front_page_stays_short_and_its_links_exist():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    for target in re.findall(r"\]\(((?:docs/)?[\w./-]+\.md)\)", text):
        assert (README.parent / target).exists(), target


def _bash_lines(text: str) -> list[str]:
    """The command lines of the README's ```bash blocks (``a && b`` split in two)."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            lines += [part.strip() for part in line.split("&&") if part.strip()]
    return lines


def test_every_xpconv_command_of_the_readme_parses():
    """Each ``xpconv ...`` line (also behind ``mpiexec -n N``) is accepted by the real parser."""
    import shlex

    from xpconv.cli import _parser
    commands = [shlex.split(line) for line in _bash_lines(README.read_text())]
    commands = [c[c.index("xpconv") + 1:] for c in commands if "xpconv" in c]
    assert len(commands) >= 6
    for argv in commands:
        args = _parser().parse_args(argv)
        assert args.command == argv[0]


def test_the_readme_train_evaluate_predict_export_block_runs_as_written(tmp_path, monkeypatch):
    """The block's four commands as written (train with --quiet: no progress bar), on a small
    ``flowers/`` folder made here."""
    import shlex

    import numpy as np
    import pytest
    pytest.importorskip("PIL", reason="the block reads image folders and files: pip install '.[images]'")
    pytest.importorskip("onnx", reason="the block exports to ONNX: pip install '.[export]'")
    from PIL import Image

    from xpconv.cli import main
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    for k, name in enumerate(["rose", "tulip"]):
        (tmp_path / "flowers" / name).mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 80, (16, 16, 3)) + 150 * k
            Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "flowers" / name / f"{i}.png")
    Image.open(tmp_path / "flowers" / "rose" / "0.png").save(tmp_path / "rose.jpg")
    Image.open(tmp_path / "flowers" / "tulip" / "0.png").save(tmp_path / "tulip.png")
    lines = [line for line in _bash_lines(README.read_text()) if "flowers" in line]
    assert [line.split()[1] for line in lines] == ["train", "evaluate", "predict", "export"]
    for line in lines:
        argv = shlex.split(line)
        assert argv[0] == "xpconv" and main([*argv[1:], *(["--quiet"] if argv[1] == "train" else [])]) == 0, line
    for made in ("flowers.npz", "report.json", "confusion.png", "flowers.onnx", "runs/flowers/last.npz"):
        assert (tmp_path / made).is_file(), made
