"""The clustering-method registry: a method is a module of this package with a ``propose`` function and a config
``conf/cluster/<name>.yaml``; the names are the config files (``common.yaml`` aside), so adding a method adds no
if-branch anywhere (docs/contributing.md shows one).

``propose(X, kmax, p, n_jobs) -> (labels, info)``: labels one per row of ``X`` (``-1`` = noise), ``info`` at least
``{"n_components": int}``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from importlib import import_module
from typing import Any

import numpy as np

from deepspike.sorting.clustering.params import METHODS, ClusterParams

Propose = Callable[[np.ndarray, int, ClusterParams, int], tuple[np.ndarray, dict[str, Any]]]


@cache
def method(name: str) -> Propose:
    """The ``propose`` function of method ``name`` (validated against the configs, so no file names a module)."""
    if name not in METHODS:
        raise KeyError(f"unknown clustering method {name!r}; known: {METHODS}")
    return import_module(f"{__package__}.{name}").propose


def propose(X: np.ndarray, kmax: int, p: ClusterParams, n_jobs: int = 1) -> tuple[np.ndarray, dict[str, Any]]:
    """Run ``p.method``: labels (``-1`` for noise) and what it chose."""
    return method(p.method)(X, kmax, p, n_jobs)
