"""The one loader of user-facing defaults: the YAML files in ``conf/`` declare them (with a comment per key), and
dataclass fields and library functions read them here instead of repeating literals that drift.

A file's ``defaults:`` list may name sibling files of the same group (``conf/cluster/gmm.yaml`` starts from
``common``), merged in list order as Hydra does; other Hydra-only entries (``override ...``, ``_self_``) are
ignored, and ``hydra:`` is dropped. Values are returned as plain containers, unresolved (``${seed}`` stays text).
"""

from __future__ import annotations

import copy
import dataclasses
from functools import cache
from typing import Any

import numpy as np

from deepspike.errors import DeepSpikeError
from deepspike.paths import CONF_DIR


@cache
def _load(relpath: str) -> dict[str, Any]:
    from omegaconf import OmegaConf

    path = CONF_DIR / relpath
    if not path.is_file():
        raise DeepSpikeError(f"config defaults not found at {path}; reinstall deepspike with its conf/ folder")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    if not isinstance(raw, dict):
        raise DeepSpikeError(f"{path} must be a YAML mapping of option: value")
    merged: dict[str, Any] = {}
    own = {k: v for k, v in raw.items() if k not in ("defaults", "hydra")}
    entries = raw.get("defaults") or ["_self_"]
    if "_self_" not in entries:
        entries = [*entries, "_self_"]
    for entry in entries:
        if entry == "_self_":
            merged.update(own)
        elif isinstance(entry, str) and "/" not in entry and " " not in entry:  # a sibling file of this group
            merged.update(_load(str((CONF_DIR / relpath).parent.relative_to(CONF_DIR) / f"{entry}.yaml")))
    return merged


def conf_values(relpath: str) -> dict[str, Any]:
    """Every default declared in ``conf/<relpath>`` (a fresh copy: callers may modify it)."""
    return copy.deepcopy(_load(relpath))


def conf_value(relpath: str, key: str) -> Any:
    """The default of ``key`` (dotted for nested keys, e.g. ``pretext.params``; empty: the whole file) declared in
    ``conf/<relpath>``."""
    node: Any = _load(relpath)
    for part in key.split(".") if key else []:
        if not isinstance(node, dict) or part not in node:
            raise DeepSpikeError(f"conf/{relpath} declares no `{key}`; reinstall deepspike with its conf/ folder")
        node = node[part]
    return copy.deepcopy(node)


def conf_field(relpath: str, key: str = "") -> Any:
    """A dataclass field whose default is the value of ``key`` in ``conf/<relpath>`` (mutable ones copied)."""
    value = conf_value(relpath, key)
    if isinstance(value, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(value))
    return dataclasses.field(default=value)


def is_number(x: Any) -> bool:
    """A real number given for an option (Python and numpy count booleans as integers; options do not)."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def known_options(cls: Any, d: Any, block: str) -> dict[str, Any]:
    """``d`` (a Hydra or plain mapping) as a dict of ``cls``'s fields; an unknown key fails naming the ``block`` of
    ``conf/sort.yaml`` and the keys it knows (every options dataclass reads its block this way)."""
    d = dict(d or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise DeepSpikeError(f"unknown {block} option(s) {unknown}; known: {sorted(known)} (see conf/sort.yaml)")
    return d
