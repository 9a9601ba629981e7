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
