"""Benchmarks of granite_storage against plain-Python baselines and granite-storage 0.1.0.

Run with ``python -m benchmarks`` (``--help`` for sizes and flags, ``--quick``
for a smoke run). Every measured workload runs in a fresh child process, so
its time and peak memory are its own. Nothing here imports granite_storage at
module level: the same modules are imported by children that load 0.1.0.
"""
