"""The test suite, importable as a package (shared helpers: ``tests.helpers``)."""
