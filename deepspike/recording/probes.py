"""Probe geometry: the layouts DeepSpike generates (tetrodes, linear / grid / staggered shanks), probes given by the
user (``probe=``: a probeinterface JSON, a ``.prb`` or a generated layout by name), their attachment to a recording,
and the refusal to sort a multi-channel recording that has no geometry.

Without geometry every channel is sorted alone and one neuron becomes one unit per channel that sees it (a 32-channel
``.dat`` of 10 units gave 125): files that store no probe (raw binary, ``.npy``, ``.mat``) need one given.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepspike.errors import DeepSpikeError, RecordingError

logger = logging.getLogger(__name__)

PROBES = ("tetrode", "shank", "neuropixels")  # make_probe's kinds (the generators and the bench set)


SHANK_PITCH_UM = 22.0  # contact pitch of the generated two-column shank (both directions), columns staggered by half
NP1_X_PITCH_UM, NP1_ROW_UM = 16.0, 20.0  # Neuropixels 1.0: 4 columns 16 um apart, a contact pair every 20 um
TETRODE_SPACING_UM = 1000.0  # between the tetrodes of a multi-tetrode layout: never neighbours, and separate groups

# What ``probe=`` accepts, as the error messages list it (contacts of a generated layout are wired to the channels in
# file order, numbered down each column in turn)
PROBE_FORMS = (
    "FILE.json (probeinterface.write_probeinterface)",
    "FILE.prb (a Klusta / SpyKING CIRCUS probe file)",
    "tetrode (channels 0-3, 4-7, ... one tetrode each)",
    "linear:PITCH (one column, PITCH um apart)",
    "grid:COLUMNSxPITCH (columns side by side, rows aligned)",
    "staggered:COLUMNSxPITCH (every other column shifted by half a pitch)",
)
_NUMBER = r"\d+(?:\.\d*)?"
_LINEAR = re.compile(rf"^linear:(?P<pitch>{_NUMBER})$")
_COLUMNS = re.compile(rf"^(?P<kind>grid|staggered):(?P<columns>\d+)x(?P<pitch>{_NUMBER})$")


@dataclass(frozen=True)
class _Layout:
    """A generated layout: ``kind`` (tetrode | linear | grid | staggered), its columns and pitch (um)."""

    kind: str
    columns: int = 1
    pitch_um: float = 0.0


def make_probe(kind: str, num_channels: int | None = None) -> Any:
    """A probeinterface Probe wired to channels 0..n-1: ``tetrode`` (4 contacts, 10 um radius) or ``shank``.

    The shank has two staggered columns of ``num_channels / 2`` contacts at ``SHANK_PITCH_UM`` (a silicon
    multi-column shank in miniature), so a unit is seen on several neighbouring contacts. ``neuropixels`` is
    Neuropixels-1.0-like (4 staggered columns, rows 20 um apart, 128 contacts by default): dense and drift tiers.
    """
    from probeinterface import generate_tetrode

    if kind == "tetrode":
        if num_channels not in (None, 4):
            raise DeepSpikeError(f"a tetrode has 4 channels, got num_channels={num_channels}")
        probe = generate_tetrode()
    elif kind == "shank":
        n = 16 if num_channels is None else int(num_channels)
        if n < 4 or n % 2:
            raise DeepSpikeError(f"a shank needs an even num_channels >= 4 (two columns), got {num_channels}")
        probe = _columns(_Layout("staggered", 2, SHANK_PITCH_UM), n)
    elif kind == "neuropixels":
        probe = _neuropixels(128 if num_channels is None else int(num_channels))
    else:
        raise DeepSpikeError(f"probe must be one of {list(PROBES)}, got {kind!r}")
    probe.set_device_channel_indices(np.arange(probe.get_contact_count()))
    return probe


# --------------------------------------------------------------------------------------------------------------
# probe= : parse, build, attach
# --------------------------------------------------------------------------------------------------------------


def _bad_spec(spec: Any, why: str) -> DeepSpikeError:
    forms = "; ".join(PROBE_FORMS)
    return DeepSpikeError(
        f"probe={str(spec)!r}: {why}. Accepted: {forms}; e.g. probe=linear:25 on the command line, "
        f"deepspike.sort(path, probe='linear:25') in Python"
    )


def check_probe_spec(spec: Any) -> Path | _Layout | Any | None:
    """The parsed ``probe=`` value (a file path, a layout, a probeinterface object, or None), or an error naming the
    key and the accepted forms: checked when the options are read, before any work."""
    if spec is None or _is_probe_object(spec):
        return spec
    if not isinstance(spec, str | Path):
        raise _bad_spec(spec, f"a {type(spec).__name__} is not a probe")
    text = str(spec).strip()
    if isinstance(spec, Path) or text.lower().endswith((".json", ".prb")):  # a file, else a layout (any case)
        path = Path(text).expanduser()
        if not path.is_file():
            raise _bad_spec(spec, f"no such file (relative paths start at {Path.cwd()})")
        return path
    text = text.lower()
    if text == "tetrode":
        return _Layout("tetrode")
    if m := _LINEAR.match(text):
        layout = _Layout("linear", 1, float(m["pitch"]))
    elif m := _COLUMNS.match(text):
        layout = _Layout(m["kind"], int(m["columns"]), float(m["pitch"]))
    else:
        raise _bad_spec(spec, "not a probe file or a layout")
    least = 2 if layout.kind == "staggered" else 1
    if layout.columns < least or layout.pitch_um <= 0:
        raise _bad_spec(spec, f"a {layout.kind} layout needs COLUMNS >= {least} and a PITCH > 0 um")
    return layout


def probe_from_spec(spec: Any, num_channels: int, source: Any = None) -> Any:
    """The probeinterface ``ProbeGroup`` that ``probe=`` names, for a recording of ``num_channels`` channels
    (``source``: the recording's file, for messages), wired to channels 0..n-1 and checked against their count."""
    from probeinterface import Probe, ProbeGroup

    parsed = check_probe_spec(spec)
    where = f"the recording {source}" if source is not None else "the recording"
    if isinstance(parsed, _Layout):
        return _generated(parsed, num_channels, spec, where)
    if isinstance(parsed, Path):
        group = _read_probe_file(parsed)
    elif isinstance(parsed, Probe):  # a copy, wiring included: the caller's object is left as it is
        group = ProbeGroup()
        group.add_probe(Probe.from_dict(parsed.to_dict(array_as_list=False)))
    else:
        group = parsed.copy()
    _check_wiring(group, num_channels, parsed if isinstance(parsed, Path) else "the probe given", where)
    return group


def attach_probe(recording: Any, spec: Any, source: Any = None, required: bool = False) -> Any:
    """``recording`` with the probe ``spec`` attached (a view: the caller's recording is left as it is); the
    recording itself when ``spec`` is None. ``required``: refuse a multi-channel result without geometry."""
    if spec is not None:
        group = probe_from_spec(spec, recording.get_num_channels(), source)
        if recording.has_probe():
            logger.info("%s: its own probe is replaced by probe=%s", source or "the recording", spec)
        view = recording.select_channels(recording.channel_ids)
        view.set_probegroup(group, group_mode="auto", check_overlap=False)  # tetrodes of a .prb share coordinates
        recording = view
    if required:
        require_geometry(recording, source)
    return recording


def require_geometry(recording: Any, source: Any = None) -> None:
    """Refuse a multi-channel recording without a probe: sorted channel by channel, a neuron is one unit per channel."""
    n = recording.get_num_channels()
    if n <= 1 or recording.has_probe():
        return
    where = str(source) if source is not None else "the recording"
    raise RecordingError(
        f"{where}: {n} channels and no probe geometry, so neighbouring channels cannot be sorted together (each "
        f"channel alone makes one neuron a unit per channel). Give the probe: probe=FILE.json / FILE.prb, or a layout "
        f"such as probe=linear:25 (one column, 25 um pitch), probe=staggered:2x20 or probe=tetrode on the command "
        f"line; in Python recording.set_probe(probe) then deepspike.sort(recording), or deepspike.sort(path, "
        f"probe='linear:25'). To sort each channel on its own anyway: multichannel.enabled=false"
    )


# --- helpers ----------------------------------------------------------------------------------------------------


def _is_probe_object(spec: Any) -> bool:
    from probeinterface import Probe, ProbeGroup

    return isinstance(spec, Probe | ProbeGroup)


def _columns(layout: _Layout, n: int) -> Any:
    """``n`` contacts in ``layout.columns`` columns at ``layout.pitch_um``, numbered down each column in turn."""
    from probeinterface import generate_multi_columns_probe

    shift = [0.0, layout.pitch_um / 2] * layout.columns if layout.kind == "staggered" else None
    return generate_multi_columns_probe(
        num_columns=layout.columns, num_contact_per_column=n // layout.columns, xpitch=layout.pitch_um,
        ypitch=layout.pitch_um, y_shift_per_column=None if shift is None else shift[: layout.columns],
    )  # fmt: skip


def _neuropixels(n: int) -> Any:
    """Neuropixels 1.0's checkerboard: column pairs (0, 2) and (1, 3) alternate rows, so each column has a contact
    every 40 um and the probe one pair every 20 um (probeinterface's NP1000 needs its online library)."""
    from probeinterface import generate_multi_columns_probe

    if n < 8 or n % 4:
        raise DeepSpikeError(f"a neuropixels probe needs num_channels a multiple of 4, >= 8, got {n}")
    return generate_multi_columns_probe(
        num_columns=4, num_contact_per_column=n // 4, xpitch=NP1_X_PITCH_UM, ypitch=2 * NP1_ROW_UM,
        y_shift_per_column=[0.0, NP1_ROW_UM, 0.0, NP1_ROW_UM], contact_shapes="square",
        contact_shape_params={"width": 12.0},
    )  # fmt: skip


def _generated(layout: _Layout, n: int, spec: Any, where: str) -> Any:
    """A generated layout for ``n`` channels in file order (tetrodes: one probe, hence one group, each)."""
    from probeinterface import ProbeGroup, generate_tetrode

    per = 4 if layout.kind == "tetrode" else layout.columns
    if n < per or n % per:
        unit = "4 per tetrode" if layout.kind == "tetrode" else f"{per} columns"
        raise RecordingError(
            f"probe={spec}: {where} has {n} channels, not a multiple of {per} ({unit}); pick a layout that fits, or "
            f"give the probe file (probe=FILE.json / FILE.prb)"
        )
    group = ProbeGroup()
    if layout.kind == "tetrode":
        for i in range(n // 4):
            tetrode = generate_tetrode()
            tetrode.move([i * TETRODE_SPACING_UM, 0.0])
            group.add_probe(tetrode)
    else:
        group.add_probe(_columns(layout, n))
    group.set_global_device_channel_indices(np.arange(n))
    return group


def _read_probe_file(path: Path) -> Any:
    """A probeinterface JSON or a .prb as a ``ProbeGroup``; a file they cannot read names itself and the fix."""
    from probeinterface import read_prb, read_probeinterface

    reader = read_prb if path.suffix.lower() == ".prb" else read_probeinterface
    try:
        return reader(path)
    except Exception as e:
        raise RecordingError(
            f"{path}: cannot read it as a {'.prb' if reader is read_prb else 'probeinterface JSON'} probe file "
            f"({type(e).__name__}: {e}); write it with probeinterface.write_probeinterface / write_prb"
        ) from e


def _check_wiring(group: Any, n: int, what: Any, where: str) -> None:
    """Contacts wired to channels 0..n-1, one each; a probe with no wiring is wired in contact order."""
    wired = [p.device_channel_indices is not None for p in group.probes]
    if not any(wired):
        logger.info("%s: no channel wiring (device_channel_indices); contacts wired to channels in order", what)
        group.set_global_device_channel_indices(np.arange(group.get_contact_count()))
    elif not all(wired):
        raise RecordingError(f"{what}: some of its probes have channel wiring and some not; wire them all")
    channels = np.asarray(group.get_global_device_channel_indices()["device_channel_indices"])
    connected = np.sort(channels[channels >= 0])
    if len(connected) != n:
        raise RecordingError(
            f"{what}: the probe has {len(connected)} contacts wired to channels but {where} has {n} channels; give "
            f"this recording's probe (probe=FILE), or check recording_options.num_channels"
        )
    if not np.array_equal(connected, np.arange(n)):
        raise RecordingError(
            f"{what}: its contacts are wired to channels {connected.tolist()}, not to 0..{n - 1} once each; fix its "
            f"device_channel_indices (probeinterface) or the .prb `channels` lists"
        )
