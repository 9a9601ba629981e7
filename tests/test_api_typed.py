"""The public API is typed: every parameter and return of what ``xpconv.__all__`` and
``xpconv.functional.__all__`` export carries an annotation (mypy checks the bodies of
annotated functions only, so an unannotated public function would escape it).

Checked with ``inspect.signature``: for a function, every parameter (``self``/``cls``
excepted; ``*args``/``**kwargs`` need one too) and the return; for a class, the
parameters of ``__init__`` and, for every public method and property defined on the
class itself, its parameters and return.
"""
from __future__ import annotations

import inspect

import pytest

import xpconv
import xpconv.functional

# Every public name is fully annotated. A name may be let off here only while its module,
# one of ALLOWED_MODULES, is being typed; the allowlist cannot hide a name defined elsewhere.
ALLOWED_UNTYPED: set[str] = set()
ALLOWED_MODULES = ("xpconv.layers", "xpconv.compile")


def _missing_in(func, *, skip_first: bool, need_return: bool) -> list[str]:
    """Names of the unannotated parameters of ``func`` (and ``"return"``)."""
    sig = inspect.signature(func)
    params = list(sig.parameters.values())
    if skip_first and params and params[0].name in ("self", "cls"):
        params = params[1:]
    missing = [p.name for p in params if p.annotation is inspect.Parameter.empty]
    if need_return and sig.return_annotation is inspect.Signature.empty:
        missing.append("return")
    return missing


def unannotated(obj) -> dict[str, list[str]]:
    """``{qualified name: [unannotated parameters, "return"]}`` for a function or a class."""
    found: dict[str, list[str]] = {}
    if inspect.isfunction(obj):
        missing = _missing_in(obj, skip_first=False, need_return=True)
        if missing:
            found[obj.__qualname__] = missing
        return found
    assert inspect.isclass(obj), obj
    init = obj.__init__
    if inspect.isfunction(init):      # a Python __init__ (not object's or an exception's slot)
        missing = _missing_in(init, skip_first=True, need_return=False)
        if missing:
            found[f"{obj.__qualname__}.__init__"] = missing
    for name, member in vars(obj).items():
        if name.startswith("_"):
            continue
        if isinstance(member, property):
            func, skip = member.fget, True
        elif isinstance(member, staticmethod):
            func, skip = member.__func__, False
        elif isinstance(member, classmethod):
            func, skip = member.__func__, True
        elif inspect.isfunction(member):
            func, skip = member, True
        else:
            continue
        if func is None:
            continue
        missing = _missing_in(func, skip_first=skip, need_return=True)
        if missing:
            found[f"{obj.__qualname__}.{name}"] = missing
    return found


def _public(module) -> list[tuple[str, object]]:
    objects = [(name, getattr(module, name)) for name in module.__all__]
    return [(name, obj) for name, obj in objects if inspect.isfunction(obj) or inspect.isclass(obj)]


TOP_LEVEL = _public(xpconv)
FUNCTIONAL = _public(xpconv.functional)


def test_the_lists_are_not_empty():
    names = {name for name, _ in TOP_LEVEL}
    assert {"Sequential", "SimpleConvNet", "Trainer", "Device", "load_model"} <= names
    assert {name for name, _ in FUNCTIONAL} == set(xpconv.functional.__all__)


@pytest.mark.parametrize(("name", "obj"), TOP_LEVEL, ids=[name for name, _ in TOP_LEVEL])
def test_public_name_is_annotated(name, obj):
    if name in ALLOWED_UNTYPED:
        pytest.skip(f"{name}: defined in {obj.__module__}, typed later (ALLOWED_UNTYPED)")
    missing = unannotated(obj)
    assert not missing, f"xpconv.{name}: unannotated parameters or returns: {missing}"


@pytest.mark.parametrize(("name", "obj"), FUNCTIONAL, ids=[name for name, _ in FUNCTIONAL])
def test_functional_op_is_annotated(name, obj):
    missing = unannotated(obj)
    assert not missing, f"xpconv.functional.{name}: unannotated parameters or returns: {missing}"


def test_allowlist_only_names_untouchable_modules():
    exported = dict(TOP_LEVEL)
    for name in sorted(ALLOWED_UNTYPED):
        assert name in exported, f"ALLOWED_UNTYPED names {name!r}, which xpconv.__all__ does not export"
        module = exported[name].__module__
        assert module.startswith(ALLOWED_MODULES), (
            f"ALLOWED_UNTYPED may only name what xpconv/layers, compile.py and threads.py define; "
            f"{name} comes from {module}")


# ---------------------------------------------------------------------------- the checker itself

def _untyped(a, b: int = 0):
    return a


def _typed(a: int, *args: int, b: int = 0, **kwargs: str) -> int:
    return a


class _Partly:
    def __init__(self, a: int, b) -> None:
        self.a = a

    def method(self, x: int):
        return x

    @property
    def value(self) -> int:
        return 1

    @staticmethod
    def helper(y) -> int:
        return y

    def _private(self, z):
        return z


def test_checker_finds_what_is_missing():
    assert unannotated(_untyped) == {"_untyped": ["a", "return"]}
    assert unannotated(_typed) == {}
    assert unannotated(_Partly) == {"_Partly.__init__": ["b"], "_Partly.method": ["return"],
                                    "_Partly.helper": ["y"]}
