"""Error types. Every error DeepSpike raises for bad input names the file and the fix."""

from __future__ import annotations


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
