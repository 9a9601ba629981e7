"""Benchmarks for xpconv: the textbook NumPy baseline and the timing harness."""
