"""Development tooling: the embedded Redis of ``make run``, child processes for ``serve``, the
tests and the benchmarks, the demo fleet and the offline model it runs on. Not used by a
production deployment.

May import: ``coordination.core``, ``coordination.integrations``, ``coordination.foundation``.
"""
