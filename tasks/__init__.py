"""The task adapters, one package each; none imports another.

What one task provides to the others goes through a registry of the core, filled here: the source
set of ``pretrained: synthetic`` (:mod:`unimatch.pretrained`) is ``tasks.natural``'s, looked up only
when a trunk is trained.
"""
import unimatch  # noqa: F401  (first: it sets the OpenMP wait policy before torch loads)
from unimatch.pretrained import register_synthetic_source


def _natural_source():
    from tasks.natural.pretrain import SYNTHETIC_SOURCE

    return SYNTHETIC_SOURCE


register_synthetic_source(_natural_source)
