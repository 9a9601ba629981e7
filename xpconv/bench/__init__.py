"""The xpconv benchmark: xpconv against the textbook NumPy baseline and PyTorch.

Run it as ``xpconv bench [options]`` or ``python -m xpconv.bench [options]``
(``--help`` lists the options; ``--quick`` checks that it runs).  One module per concern:

* :mod:`~xpconv.bench.cases`: the benchmark cases and their inputs (the training steps
  with Adam: ``--cases 'step*'``);
* :mod:`~xpconv.bench.contenders`: xpconv on each device, compiled (``xpconv:jax+compiled``,
  ``xpconv:torch+compiled``: the step cases only), the textbook baseline
  (:mod:`~xpconv.bench.textbook`), PyTorch;
* :mod:`~xpconv.bench.timing`: round-robin samples, idle gaps, the GEMM ceiling;
* :mod:`~xpconv.bench.memory`: peak extra memory in a fresh subprocess;
* :mod:`~xpconv.bench.launch_proxy`: kernel ops and blocking syncs per call on torch CPU;
* :mod:`~xpconv.bench.runner`: the driver; :mod:`~xpconv.bench.results`: the typed results
  (:class:`Measurement`, :class:`CaseResult`, :class:`BenchmarkRun`);
* :mod:`~xpconv.bench.report`: the screen table, JSON, Markdown and PNG;
  :mod:`~xpconv.bench.step_summary`: their section on the training steps (compiled vs
  uncompiled, host cost, issue 19's targets).
"""
from .cli import main
from .results import BenchmarkRun, CaseResult, Ceiling, LaunchRecord, Measurement

__all__ = ["main", "BenchmarkRun", "CaseResult", "Ceiling", "LaunchRecord", "Measurement"]
