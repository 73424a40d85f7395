"""Error types. Every error DeepSpike raises for bad input names the file and the fix."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class DeepSpikeError(ValueError):
    """Base class: bad input or configuration, with a message a user can act on."""


class RecordingError(DeepSpikeError):
    """A recording cannot be opened or is unusable (format, NaN/Inf, too short, bad rate)."""


class ShardError(DeepSpikeError):
    """A corpus shard is corrupt, truncated or inconsistent with its manifest."""


class SpecMismatchError(DeepSpikeError):
    """Window spec / normalization of data and model disagree."""


class OutputExistsError(DeepSpikeError, FileExistsError):
    """Refusing to overwrite an existing result or corpus."""


def differences(old: dict[str, Any], new: dict[str, Any], keys: Any = None, arrow: str = "->") -> list[str]:
    """``key: old -> new`` for each differing key (one level into nested mappings), for mismatch messages."""
    out = []
    for key in sorted(set(old) | set(new)) if keys is None else keys:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [
                f"{key}.{k}: {a.get(k)!r} {arrow} {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
            ]
        elif a != b:
            out.append(f"{key}: {a!r} {arrow} {b!r}")
    return out


@contextmanager
def cli_errors(app: str, debug: bool = False) -> Iterator[None]:
    """Turn expected failures into one line naming the file and the fix; ``debug=true`` keeps the traceback.

    Console apps (corpus, train, sort) share this so a user sees the same kind of message everywhere; a bug (any
    other exception) still shows its traceback, since hiding it would make it unreportable.
    """
    try:
        yield
    except (DeepSpikeError, OSError) as e:
        if debug:
            raise
        raise SystemExit(f"{app}: error: {_one_line(e)}\n(run again with debug=true for the full traceback)") from None


def _one_line(e: BaseException) -> str:
    """A user-facing message; OS errors get the path they failed on and what to do about it."""
    if isinstance(e, OSError) and not isinstance(e, DeepSpikeError):
        where = f" '{e.filename}'" if getattr(e, "filename", None) else ""
        fix = {
            PermissionError: "make it writable or choose another path (e.g. out=DIR)",
            FileNotFoundError: "check the path",
            IsADirectoryError: "give a file, not a folder",
        }.get(type(e), "check the path, free space and permissions")
        return f"cannot access{where}: {e.strerror or e}. Fix: {fix}."
    return str(e)
