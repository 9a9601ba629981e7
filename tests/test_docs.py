"""The documentation runs as written: every ```python block of docs/*.md, every ``>>>``
example of xpconv's docstrings, the generated CLI page, the API reference's coverage of
``xpconv.__all__``, and the strict site build."""
from __future__ import annotations

import doctest
import importlib
import pathlib
import pkgutil
import re
import shutil
import subprocess
import sys

import pytest

import xpconv

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p.name for p in DOCS.glob("*.md"))
OPTIONAL = {"PIL", "torch", "jax", "mpi4py", "matplotlib", "onnx", "onnxruntime", "cupy"}


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


@pytest.mark.parametrize("page", PAGES)
def test_docs_python_blocks_run(page, tmp_path, monkeypatch):
    blocks = _python_blocks((DOCS / page).read_text())
    if not blocks:
        pytest.skip(f"{page} has no python blocks (```py blocks are shown, not run)")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"{page} block {i + 1}", "exec"), namespace)
        except ModuleNotFoundError as exc:
            if exc.name not in OPTIONAL:
                raise
            pytest.skip(f"{page} block {i + 1} needs {exc.name}, an optional library (an extra of xpconv)")


def _modules():
    for info in pkgutil.walk_packages(xpconv.__path__, "xpconv."):
        if info.name.endswith("__main__"):
            continue
        yield info.name


@pytest.mark.parametrize("name", sorted(_modules()))
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    try:
        module = importlib.import_module(name)
    except ImportError as exc:            # an optional library (mpi4py, onnx, ...)
        pytest.skip(f"{name}: {exc}")
    monkeypatch.chdir(tmp_path)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = [t for t in finder.find(module, name, extraglobs={"xpconv": xpconv}) if t.examples]
    for test in tests:
        runner.run(test)
    assert runner.failures == 0, f"{runner.failures} failing >>> example(s) in {name}"


def test_cli_page_is_current():
    sys.path.insert(0, str(DOCS))
    try:
        import gen_cli
    finally:
        sys.path.remove(str(DOCS))
    assert (DOCS / "cli.md").read_text() == gen_cli.render(), "run: python docs/gen_cli.py"


def test_api_reference_covers_every_public_name():
    text = (DOCS / "api.md").read_text()
    documented = set(re.findall(r"^::: xpconv\.(\w+)", text, flags=re.M))
    assert set(xpconv.__all__) <= documented, sorted(set(xpconv.__all__) - documented)


def test_every_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text()
    assert [p for p in PAGES if p not in nav] == []


def test_the_site_builds_with_warnings_as_errors(tmp_path):
    if shutil.which("mkdocs") is None:
        pytest.skip('mkdocs not installed (pip install ".[docs]")')
    pytest.importorskip("mkdocstrings", reason='mkdocstrings not installed (pip install ".[docs]")')
    done = subprocess.run(["mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
