"""DeepSpike: a foundation-model framework for spike sorting.

Public API (imported lazily so `import deepspike` stays fast and torch-free until needed):
``open_recording``, ``load_ground_truth``, ``load_encoder``, ``sort``, ``sort_snippets``, ``compare_labels``,
``WindowSpec``, ``extract_spikes``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "open_recording": "deepspike.recording.readers",
    "load_ground_truth": "deepspike.recording.ground_truth",
    "load_encoder": "deepspike.model.export",
    "sort": "deepspike.sorting.pipeline",
    "sort_snippets": "deepspike.sorting.pipeline",
    "compare_labels": "deepspike.evaluation.compare",
    "WindowSpec": "deepspike.spec",
    "extract_spikes": "deepspike.spikes.extract",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'deepspike' has no attribute {name!r}")
