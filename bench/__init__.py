"""Benchmarks: run each as ``python -m bench.<suite>`` from the repository root."""
