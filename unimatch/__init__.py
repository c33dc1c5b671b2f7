"""UniMatch core.

Importing it sets OpenMP's wait policy to PASSIVE unless one is set (``OMP_WAIT_POLICY``):
OpenMP threads that spin while waiting for their partner cost 3x per training iteration when
the cores are shared (measured in docs/benchmarks.md). libgomp reads the variable once, when
torch loads, so this runs before the first ``import torch`` of the entry points.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
