"""UniMatch core.

Importing it chooses how OpenMP threads wait (:mod:`unimatch.openmp_wait`: a short spin on an
idle CPU, passive on a busy one, the user's own setting kept), before the entry points' first
``import torch``: libgomp reads the variables once, when torch loads. ``OPENMP_WAIT`` is the line
the entry points log about the choice.
"""
import os

from unimatch.openmp_wait import choose_wait_policy

OPENMP_WAIT = choose_wait_policy(os.environ)
