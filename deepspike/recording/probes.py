"""Probe layouts DeepSpike generates (tetrode, two-column staggered shank) as probeinterface objects."""

from __future__ import annotations

from typing import Any

import numpy as np

from deepspike.errors import DeepSpikeError

PROBES = ("tetrode", "shank")


SHANK_PITCH_UM = 22.0  # contact pitch of the generated two-column shank (both directions), columns staggered by half


def make_probe(kind: str, num_channels: int | None = None) -> Any:
    """A probeinterface Probe wired to channels 0..n-1: ``tetrode`` (4 contacts, 10 um radius) or ``shank``.

    The shank has two staggered columns of ``num_channels / 2`` contacts at ``SHANK_PITCH_UM`` (a silicon
    multi-column shank in miniature), so a unit is seen on several neighbouring contacts.
    """
    from probeinterface import generate_multi_columns_probe, generate_tetrode

    if kind == "tetrode":
        if num_channels not in (None, 4):
            raise DeepSpikeError(f"a tetrode has 4 channels, got num_channels={num_channels}")
        probe = generate_tetrode()
    elif kind == "shank":
        n = 16 if num_channels is None else int(num_channels)
        if n < 4 or n % 2:
            raise DeepSpikeError(f"a shank needs an even num_channels >= 4 (two columns), got {num_channels}")
        probe = generate_multi_columns_probe(
            num_columns=2, num_contact_per_column=n // 2, xpitch=SHANK_PITCH_UM, ypitch=SHANK_PITCH_UM,
            y_shift_per_column=[0.0, SHANK_PITCH_UM / 2],
        )  # fmt: skip
    else:
        raise DeepSpikeError(f"probe must be one of {list(PROBES)}, got {kind!r}")
    probe.set_device_channel_indices(np.arange(probe.get_contact_count()))
    return probe
