"""Console-script entry points (declared in pyproject.toml); each runs the same Hydra app as its script."""

from __future__ import annotations


def corpus_main() -> None:
    """``deepspike-corpus``: build WebDataset shards from recordings (``conf/corpus.yaml``)."""
    from deepspike.data.corpus import main

    main()


def train_main() -> None:
    """``deepspike-train``: same as ``python train.py``."""
    from deepspike.model.train import main

    main()


def sort_main() -> None:
    """``deepspike-sort``: same as ``python sort.py``."""
    from deepspike.sorting.app import main

    main()


def bench_main() -> None:
    """``deepspike-bench``: DeepSpike beside other sorters on ground truth (``conf/bench.yaml``)."""
    from deepspike.evaluation.bench import main

    main()
