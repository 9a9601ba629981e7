"""What the loaders return: the book's ``((x_train, t_train), (x_test, t_test))`` plus class names."""
from __future__ import annotations

__all__ = ["DataSplits"]


class DataSplits(tuple):
    """``((x_train, t_train), (x_test, t_test))``, a plain 2-tuple, with two attributes.

    Unpacks and compares like the book's tuple; also carries:

    Attributes:
        classes: the class names, label ``k`` is ``classes[k]`` (a tuple of str), or
            None when the data does not name its classes (an ``.npz``).
        source: where the data came from (a name such as ``"cifar10"`` or a path).
    """

    classes: tuple[str, ...] | None
    source: str

    def __new__(cls, train, test, *, classes=None, source: str = ""):
        self = super().__new__(cls, (train, test))
        self.classes = None if classes is None else tuple(str(c) for c in classes)
        self.source = str(source)
        return self

    def __reduce__(self):
        return (_rebuild, (tuple(self), self.classes, self.source))


def _rebuild(parts, classes, source):
    return DataSplits(*parts, classes=classes, source=source)
