"""Benchmarks: ``python -m benchmarks`` (quick) or ``python -m benchmarks --full``."""
