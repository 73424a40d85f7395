"""Console-script entry points (declared in pyproject.toml); each runs the same Hydra app as its script."""

from __future__ import annotations


def train_main() -> None:
    """``deepspike-train``: same as ``python train.py``."""
    from deepspike.train import main

    main()


def sort_main() -> None:
    """``deepspike-sort``: same as ``python sort.py``."""
    from deepspike.sorting import main

    main()
