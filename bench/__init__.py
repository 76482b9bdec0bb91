"""Benchmarks of the CloneJob service; every figure is a ratio against a baseline
measured in the same run on the same machine. Run with `python -m bench`."""
