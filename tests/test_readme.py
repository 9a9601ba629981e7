"""The README's example runs as written."""
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if b.startswith("import numpy as np"))
    exec(compile(example, "README.md", "exec"), {})
    assert "cpu (8, 16, 16, 16) (16, 3, 3, 3)" in capsys.readouterr().out


def test_readme_names_the_test_command_ci_runs():
    text = README.read_text()
    marker = text.index("<!-- test-command -->")
    assert "python -m pytest" in text[marker:marker + 120]
