"""Open any recording as a SpikeInterface ``BaseRecording`` and its ground truth as a ``BaseSorting``.

Every later stage (preprocess, detect, corpus, sort) takes a ``BaseRecording``, so format quirks are settled
here once: which extension maps to which reader, the orientation of bare arrays, neo's multi-stream files, the
MATLAB layout of the Quiroga / Wave_clus benchmarks (sampling interval in ms, 1-based spike times that mark the
waveform onset rather than its peak), and validation (rate, emptiness, NaN/Inf) with errors that name the file
and the fix.

Readers stay lazy where the format allows it: ``.npy`` and raw binary files are memory-mapped through
SpikeInterface's binary extractor (picklable for ``n_jobs > 1``, flat memory on hour-long files); the NaN/Inf
check walks the recording in 10 s chunks. ``.mat`` files are small benchmark excerpts and are loaded into RAM.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepspike.errors import RecordingError
from deepspike.recording.arrays import (
    _corrupt,
    _how,
    _open_binary,
    _open_mat,
    _open_npy,
    _plausible_rate,
    _valid_rate,
    _wrap,
)

logger = logging.getLogger(__name__)

PathLike = str | Path
CHECK_CHUNK_S = 10.0  # seconds read at a time by the NaN/Inf check
RAW_BINARY_EXTENSIONS = (".bin", ".dat", ".raw")


@dataclass(frozen=True)
class _Neo:
    """One format read by a ``spikeinterface.extractors`` reader (most wrap neo)."""

    name: str
    reader: str  # attribute of spikeinterface.extractors
    target: str = "file"  # "file": pass the file; "folder": pass the folder holding it


_TDT = _Neo("TDT", "read_tdt", "folder")
_SPIKEGLX = _Neo("SpikeGLX", "read_spikeglx", "folder")
_NEUROSCOPE = _Neo("Neuroscope", "read_neuroscope_recording")
_OPENEPHYS = _Neo("Open Ephys", "read_openephys", "folder")
_NEURALYNX = _Neo("Neuralynx", "read_neuralynx", "folder")
_INTAN = _Neo("Intan", "read_intan")
_ALPHAOMEGA = _Neo("AlphaOmega", "read_alphaomega", "folder")
_BLACKROCK = _Neo("Blackrock", "read_blackrock")

_NEO_BY_EXT: dict[str, _Neo] = {
    **dict.fromkeys((".tev", ".tsq", ".tbk", ".tdx", ".sev"), _TDT),
    ".smr": _Neo("Spike2 (CED)", "read_spike2"),
    ".smrx": _Neo("Spike2 (CED)", "read_ced"),
    ".rhd": _INTAN,
    ".rhs": _INTAN,
    **dict.fromkeys((".ap.bin", ".lf.bin", ".nidq.bin", ".meta"), _SPIKEGLX),
    ".nwb": _Neo("NWB", "read_nwb_recording"),
    **dict.fromkeys((".ns1", ".ns2", ".ns3", ".ns4", ".ns5", ".ns6", ".nev"), _BLACKROCK),
    ".plx": _Neo("Plexon", "read_plexon"),
    ".pl2": _Neo("Plexon2", "read_plexon2"),
    ".ncs": _NEURALYNX,
    ".abf": _Neo("Axon", "read_axon"),
    ".edf": _Neo("EDF", "read_edf"),
    ".bdf": _Neo("EDF", "read_edf"),
    ".brw": _Neo("3Brain Biocam", "read_biocam"),
    ".bw": _Neo("3Brain Biocam", "read_biocam"),
    ".nix": _Neo("NIX", "read_nix"),
    ".rec": _Neo("SpikeGadgets", "read_spikegadgets"),
    ".xdat.json": _Neo("NeuroNexus", "read_neuronexus"),
    ".xml": _NEUROSCOPE,
    ".set": _Neo("Axona", "read_axona"),
    ".nex": _Neo("NeuroExplorer", "read_neuroexplorer"),
    ".mpx": _ALPHAOMEGA,
}

# HDF5 containers: told apart by their top-level keys (needs h5py).
_H5_EXTENSIONS = (".h5", ".hdf5")
_H5_KINDS: tuple[tuple[_Neo, tuple[str, ...]], ...] = (
    (_Neo("MEArec", "read_mearec"), ("recordings", "spiketrains")),
    (_Neo("Maxwell", "read_maxwell"), ("mapping",)),
    (_Neo("Maxwell", "read_maxwell"), ("wells",)),
    (_Neo("Maxwell", "read_maxwell"), ("data_store",)),
    (_Neo("3Brain Biocam", "read_biocam"), ("3BData",)),
    (_Neo("3Brain Biocam", "read_biocam"), ("3BRecInfo",)),
    (_Neo("Multi Channel Systems", "read_mcsh5"), ("Data",)),
)

_FOLDER_LAYOUTS = (
    ("Open Ephys", "folder with settings.xml / structure.oebin (or its 'Record Node' children)"),
    ("SpikeGLX", "folder with *.meta next to *.ap.bin / *.lf.bin / *.nidq.bin"),
    ("TDT", "tank/block folder with .tev/.tsq/.Tbk/.sev"),
    ("Neuralynx", "folder of .ncs files"),
    ("Intan", "one-file-per-signal folder with info.rhd"),
    ("MountainSort MDA", "folder with raw.mda + params.json"),
    ("AlphaOmega", "folder of .mpx files"),
    ("Neuroscope", ".dat with a same-name .xml"),
)


def _describe_formats() -> dict[str, str]:
    """Human-readable listing: format name -> extensions / layout (built from the reader tables)."""
    formats = {
        "SpikeInterface": "folder saved by recording.save() (binary or .zarr), or a .json dump (.pkl: allow_pickle=)",
        "NumPy": ".npy (1-D: one channel; 2-D: samples x channels or channels x samples); needs sampling_frequency=",
        "raw binary": " ".join(RAW_BINARY_EXTENSIONS) + " (interleaved samples); needs sampling_frequency=, dtype=, "
        "num_channels=",
        "Wave_clus / Quiroga MATLAB": ".mat with `data` and `samplingInterval` (ms), `sr`, `par.sr` or `dt` (s); "
        "MATLAB v5 or v7.3 (v7.3 needs h5py)",
    }
    by_name: dict[str, list[str]] = {}
    for ext, fmt in _NEO_BY_EXT.items():
        by_name.setdefault(fmt.name, []).append(ext)
    for fmt, _keys in _H5_KINDS:
        by_name.setdefault(fmt.name, [])
        for ext in _H5_EXTENSIONS:
            if ext not in by_name[fmt.name]:
                by_name[fmt.name].append(ext)
    layouts = dict(_FOLDER_LAYOUTS)
    for name, exts in by_name.items():
        text = " ".join(exts)
        formats[name] = f"{text}; or {layouts.pop(name)}" if name in layouts else text
    formats.update(layouts)
    formats["other neo formats"] = (
        "any other extension a neo RawIO claims and SpikeInterface has a recording reader for (e.g. .lfp, .xdat, "
        ".continuous), probed when the file is opened"
    )
    return formats


SUPPORTED_FORMATS: dict[str, str] = _describe_formats()


def _formats_text() -> str:
    return "\n".join(f"  - {name}: {what}" for name, what in SUPPORTED_FORMATS.items())


# --------------------------------------------------------------------------------------------------------------
# open_recording
# --------------------------------------------------------------------------------------------------------------


def open_recording(
    path: PathLike,
    sampling_frequency: float | None = None,
    dtype: str | np.dtype | None = None,
    num_channels: int | None = None,
    *,
    check_finite: bool | None = True,
    allow_pickle: bool = False,
    **kw: Any,
) -> Any:
    """Open ``path`` (any format in ``SUPPORTED_FORMATS``) as a validated SpikeInterface ``BaseRecording``.

    ``sampling_frequency`` is required for formats that do not store it (.npy, raw binary), must be plausible
    (``PLAUSIBLE_RATE_HZ``), overrides the rate stored in a .mat file (some benchmark excerpts carry a wrong ``dt``)
    and is refused by any other format whose stored rate differs. ``dtype`` and ``num_channels`` describe raw binary
    files; elsewhere they must agree with the file (never silently ignored). Extra ``kw`` go to the underlying
    reader, e.g. ``stream_name=`` / ``stream_id=`` for multi-stream formats. ``check_finite`` scans float
    recordings for NaN/Inf, 10 s at a time (None = True). ``allow_pickle`` opens ``.pkl``/``.pickle`` dumps and
    SpikeInterface descriptions naming classes outside ``SAFE_SI_CLASSES``: both run code stored in the file, so only
    for files the user made.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise RecordingError(f"{p}: no such file or folder; check the path (relative paths start at {Path.cwd()})")
    if sampling_frequency is not None:
        sampling_frequency = _valid_rate(p, sampling_frequency, "the sampling_frequency= argument")
        sampling_frequency = _plausible_rate(p, sampling_frequency)
    recording = _dispatch(p, sampling_frequency, dtype, num_channels, kw, bool(allow_pickle))
    _check_given(p, recording, sampling_frequency, dtype, num_channels)
    _validate(recording, p, check_finite is not False)
    return recording


def _dispatch(
    p: Path, fs: float | None, dtype: Any, num_channels: int | None, kw: dict[str, Any], allow_pickle: bool
) -> Any:
    """Pick the reader from the folder layout or the (multi-part) extension."""
    if p.is_dir():
        return _open_folder(p, kw, allow_pickle)
    ext = _extension(p)
    if ext in (".npy", ".mat", ".json", ".pkl", ".pickle"):
        _no_extra_args(p, ext, kw)
    if ext == ".npy":
        return _open_npy(p, fs, num_channels)
    if ext == ".mat":
        return _open_mat(p, fs)
    if ext in (".json", ".pkl", ".pickle"):
        return _open_si(p, allow_pickle)
    if ext in _NEO_BY_EXT:
        return _open_neo(_NEO_BY_EXT[ext], p, kw)
    if ext in _H5_EXTENSIONS:
        return _open_neo(_sniff_h5(p), p, kw)
    if ext in RAW_BINARY_EXTENSIONS:
        sidecar = _binary_sidecar(p)
        if sidecar is not None:
            return _open_neo(sidecar[0], sidecar[1], kw)
        return _open_binary(p, fs, dtype, num_channels, kw)
    probed = _probe_neo(p, ext)
    if probed is not None:
        return _open_neo(probed, p, kw)
    raise RecordingError(
        f"{p}: unknown recording format {ext or '(no extension)'!r}{_neo_only_note(ext)}. Convert it to one of "
        f"these, or rename it with the right extension:\n{_formats_text()}"
    )


def _neo_rawios(ext: str) -> list[Any]:
    """neo RawIO classes that claim the extension (neo's own table, as ``neo.rawio.get_rawio`` reads it)."""
    try:
        from neo.rawio import rawiolist
    except ImportError:
        return []
    return [io for io in rawiolist if ext and ext[1:] in {e.lower() for e in io.extensions}]


def _si_neo_recording_readers() -> dict[str, Any]:
    """SpikeInterface recording readers by the neo RawIO class they wrap."""
    import spikeinterface.extractors.neoextractors as ne

    classes = (getattr(ne, n) for n in dir(ne))
    return {
        c.NeoRawIOClass: c
        for c in classes
        if isinstance(c, type) and hasattr(c, "NeoRawIOClass") and c.__name__.endswith("RecordingExtractor")
    }


def _probe_neo(p: Path, ext: str) -> _Neo | None:
    """An extension outside the tables here: the first neo RawIO that claims it and has a SpikeInterface reader."""
    readers = _si_neo_recording_readers() if _neo_rawios(ext) else {}
    for io in _neo_rawios(ext):
        reader = readers.get(io.__name__)
        if reader is not None:
            folder = "folder_path" in inspect.signature(reader.__init__).parameters
            logger.info("%s: extension %r read with neo's %s (%s)", p, ext, io.__name__, reader.__name__)
            return _Neo(io.__name__.removesuffix("RawIO"), reader.__name__, "folder" if folder else "file")
    return None


def _neo_only_note(ext: str) -> str:
    """Name the neo RawIOs that claim an extension SpikeInterface cannot read as a recording."""
    names = [io.__name__ for io in _neo_rawios(ext)]
    if not names:
        return ""
    return (
        f" (neo's {' / '.join(names)} reads it, but SpikeInterface has no recording reader for it: export it with "
        f"neo to NWB or .npy)"
    )


def _no_extra_args(p: Path, what: str, kw: dict[str, Any]) -> None:
    """Readers built here take no extra arguments: a typo (``samplingfrequency=``) must not pass silently."""
    if kw:
        raise RecordingError(
            f"{p}: unexpected arguments {sorted(kw)} for {what} files; remove them from recording_options (this "
            f"reader only takes sampling_frequency, num_channels, check_finite and allow_pickle)"
        )


def _extension(p: Path) -> str:
    """Lower-case extension, keeping the multi-part ones readers care about (.ap.bin, .xdat.json)."""
    name = p.name.lower()
    for multi in (".ap.bin", ".lf.bin", ".nidq.bin", ".xdat.json"):
        if name.endswith(multi):
            return multi
    return p.suffix.lower()


# --- SpikeInterface folders and dumps -------------------------------------------------------------------------


def _is_si_folder(p: Path) -> bool:
    return p.suffix.lower() == ".zarr" or any((p / n).is_file() for n in ("si_folder.json", "binary.json"))


# Classes a SpikeInterface description (si_folder.json, a .json dump) may name without ``allow_pickle``: SI
# instantiates whatever class the file names, so only plain data readers that run no code from the file are taken.
SAFE_SI_CLASSES = {
    "recording": frozenset(
        {
            "BinaryFolderRecording",
            "BinaryRecordingExtractor",
            "ChannelSliceRecording",
            "FrameSliceRecording",
            "ChannelsAggregationRecording",
            "ConcatenateSegmentRecording",
            "AppendSegmentRecording",
            "SelectSegmentRecording",
        }
    ),
    "sorting": frozenset({"NumpyFolderSorting", "NpzFolderSorting", "NpzSortingExtractor"}),
}


def _si_load(p: Path, kind: str, allow_pickle: bool = False) -> Any:
    """``spikeinterface.load`` of a folder / dump, after checking it names only ``SAFE_SI_CLASSES`` and holds no
    pickle (SI unpickles .pkl dumps and ``properties/*.npy`` with ``allow_pickle=True``)."""
    import spikeinterface as si

    what = f"a SpikeInterface {kind}"
    if p.suffix.lower() in (".pkl", ".pickle"):
        if not allow_pickle:
            raise RecordingError(
                f"{p}: is a pickle, and unpickling runs code stored in the file, so it is not opened by default. "
                f"Re-save the {kind} with {kind}.save(folder=...) and pass that folder, or, only for a file you made "
                f"yourself, {_how(allow_pickle=True)}"
            )
        logger.warning("%s: unpickling it (allow_pickle=true); this runs code stored in the file", p)
    elif not allow_pickle:
        _check_si_description(p, kind)
    loader = getattr(si, "load", None) or si.load_extractor  # si.load from 0.102, load_extractor before
    return _wrap(p, what, loader, p)


def _check_si_description(p: Path, kind: str) -> None:
    """Refuse a SpikeInterface folder / .json that names a class outside ``SAFE_SI_CLASSES`` or holds pickles."""
    import json

    if p.suffix.lower() == ".zarr":
        return  # read by SpikeInterface's zarr reader, which names no class
    description = p / "si_folder.json" if p.is_dir() else p
    fix = f"re-save it with {kind}.save(folder=...) (or, only for a file you made yourself, {_how(allow_pickle=True)})"
    if p.is_dir():
        others = [n for n in ("spikeinterface_info.json", "sorter_output", "waveforms") if (p / n).exists()]
        if others or not description.is_file():
            raise RecordingError(f"{p}: not a {kind} folder saved by {kind}.save() (no si_folder.json); {fix}")
    try:
        tree = json.loads(description.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise _corrupt(description, "SpikeInterface .json", e) from e
    base = p if p.is_dir() else p.parent
    for node in _class_nodes(tree):
        name = str(node["class"])
        if not (name.startswith("spikeinterface.") and name.rsplit(".", 1)[-1] in SAFE_SI_CLASSES[kind]):
            raise RecordingError(
                f"{description}: names the class {name!r}, which is not a plain SpikeInterface {kind} reader "
                f"(constructing it could run code); {fix}"
            )
        folder = (node.get("kwargs") or {}).get("folder_path")
        if folder is not None:
            _check_no_pickled_properties(Path(base, folder) if node.get("relative_paths") else Path(folder), fix)
    if p.is_dir():
        _check_no_pickled_properties(p, fix)


def _class_nodes(tree: Any) -> list[dict[str, Any]]:
    """Every nested dict with a ``class`` key (SI instantiates each of them)."""
    if isinstance(tree, list):
        return [n for item in tree for n in _class_nodes(item)]
    if not isinstance(tree, dict):
        return []
    own = [tree] if "class" in tree else []
    return own + [n for value in tree.values() for n in _class_nodes(value)]


def _check_no_pickled_properties(folder: Path, fix: str) -> None:
    """SpikeInterface loads ``properties/*.npy`` with ``allow_pickle=True``: an object array would run code."""
    for npy in sorted((folder / "properties").glob("*.npy")):
        try:
            with npy.open("rb") as f:
                major, _minor = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                dtype = read(f)[2]
        except (OSError, ValueError) as e:
            raise _corrupt(npy, "NumPy .npy", e) from e
        if dtype.hasobject:
            raise RecordingError(f"{npy}: holds Python objects (a pickle, which runs code when loaded); {fix}")


def _open_si(p: Path, allow_pickle: bool = False) -> Any:
    from spikeinterface.core import BaseRecording

    obj = _si_load(p, "recording", allow_pickle)
    if not isinstance(obj, BaseRecording):
        raise RecordingError(
            f"{p}: this SpikeInterface object is a {type(obj).__name__}, not a recording; "
            f"pass the folder saved by recording.save() instead"
        )
    return obj


# --- folders ---------------------------------------------------------------------------------------------------


def _open_folder(p: Path, kw: dict[str, Any], allow_pickle: bool) -> Any:
    """Recognize a folder by its layout (SI save, Open Ephys, SpikeGLX, TDT, Neuralynx, Intan, MDA)."""
    if _is_si_folder(p):
        _no_extra_args(p, "SpikeInterface folder", kw)
        return _open_si(p, allow_pickle)
    names = {c.name.lower() for c in p.iterdir()}
    suffixes = {c.suffix.lower() for c in p.iterdir() if c.is_file()}
    if {"settings.xml", "structure.oebin"} & names or any(n.startswith("record node") for n in names):
        return _open_neo(_OPENEPHYS, p, kw, target=p)
    if "info.rhd" in names:
        return _open_neo(_INTAN, p / "info.rhd", kw)
    if ".meta" in suffixes:
        return _open_neo(_SPIKEGLX, p, kw, target=p)
    if {".tev", ".tsq", ".tbk", ".sev"} & suffixes:
        return _open_neo(_TDT, p, kw, target=p)
    if ".ncs" in suffixes:
        return _open_neo(_NEURALYNX, p, kw, target=p)
    if ".mpx" in suffixes:
        return _open_neo(_ALPHAOMEGA, p, kw, target=p)
    if "raw.mda" in names:
        import spikeinterface.extractors as se

        return _wrap(p, "MountainSort MDA", se.read_mda_recording, p, **kw)
    raise RecordingError(
        f"{p}: folder layout not recognized as a recording; pass the recording file itself, or a folder in one "
        f"of these layouts:\n{_formats_text()}"
    )


# --- neo / spikeinterface.extractors ----------------------------------------------------------------------------


def _binary_sidecar(p: Path) -> tuple[_Neo, Path] | None:
    """A .bin/.dat that belongs to a richer format: SpikeGLX (.meta), Neuroscope (.xml), Open Ephys (.oebin)."""
    if p.with_suffix(".meta").is_file():
        return _SPIKEGLX, p
    if p.suffix.lower() == ".dat" and p.with_suffix(".xml").is_file():
        return _NEUROSCOPE, p.with_suffix(".xml")
    if p.name == "continuous.dat":
        for parent in list(p.parents)[:4]:
            if (parent / "structure.oebin").is_file():
                return _OPENEPHYS, parent
    return None


def _open_neo(fmt: _Neo, p: Path, kw: dict[str, Any], target: Path | None = None) -> Any:
    """Open with a spikeinterface.extractors reader, choosing the stream when the file holds several."""
    import spikeinterface.extractors as se

    reader = getattr(se, fmt.reader, None) or getattr(se.neoextractors, fmt.reader, None)
    if reader is None:
        raise RecordingError(
            f"{p}: this SpikeInterface version has no {fmt.reader}; upgrade it (`pip install -U spikeinterface`)"
        )
    target = target if target is not None else (p.parent if fmt.target == "folder" else p)
    kw = dict(kw)
    if "stream_id" not in kw and "stream_name" not in kw and hasattr(reader, "get_streams"):
        names, _ids = _wrap(p, fmt.name, reader.get_streams, target)
        if len(names) > 1:
            kw["stream_name"] = _pick_stream(p, fmt, list(names))
    recording = _wrap(p, fmt.name, reader, target, **kw)
    if isinstance(recording, tuple):  # read_mearec returns (recording, sorting)
        recording = recording[0]
    return recording  # a sampling_frequency= that differs from the stored rate is refused by _check_given


def _pick_stream(p: Path, fmt: _Neo, names: list[str]) -> str:
    """The stream named in the file name (SpikeGLX ``*.imec0.ap.bin``), else an error listing the streams."""
    stem = p.name.lower()
    for suffix in (".bin", ".meta"):
        stem = stem.removesuffix(suffix)
    hits = [n for n in names if stem.endswith("." + n.lower()) or stem == n.lower()]
    if len(hits) == 1:
        logger.info("%s: opening stream %r (from the file name)", p, hits[0])
        return hits[0]
    listing = ", ".join(repr(n) for n in names)
    raise RecordingError(f"{p} holds several {fmt.name} streams: {listing}. Pick one with {_how(stream_name=names[0])}")


def _sniff_h5(p: Path) -> _Neo:
    """Tell MEArec / Maxwell / Biocam / MCS HDF5 files apart by their top-level keys."""
    try:
        import h5py
    except ImportError as e:
        raise RecordingError(
            f"{p}: reading HDF5 recordings (MEArec, Maxwell, Biocam, MCS) needs h5py; `pip install h5py`"
        ) from e
    try:
        with h5py.File(p, "r") as f:
            keys = set(f.keys())
    except OSError as e:
        raise _corrupt(p, "HDF5", e) from e
    for fmt, needed in _H5_KINDS:
        if set(needed) <= keys:
            return fmt
    kinds = ", ".join(sorted({fmt.name for fmt, _ in _H5_KINDS}))
    raise RecordingError(
        f"{p}: HDF5 file with top-level keys {sorted(keys)} is none of the HDF5 recordings read here ({kinds}); "
        f"export it to NWB or a SpikeInterface folder, or convert it to .npy"
    )


# --- .npy and raw binary -----------------------------------------------------------------------------------------


# --- Wave_clus / Quiroga .mat -------------------------------------------------------------------------------------


# --- validation --------------------------------------------------------------------------------------------------


def _check_given(p: Path, recording: Any, fs: float | None, dtype: Any, num_channels: int | None) -> None:
    """Options the reader did not apply (the file stores its own rate, dtype or channel count) must agree with the
    file: an ignored override would be recorded in the run's config while the file's value was used."""
    given = {
        "sampling_frequency": (fs, recording.sampling_frequency, "Hz"),
        "num_channels": (num_channels, recording.get_num_channels(), "channels"),
        "dtype": (dtype, np.dtype(recording.get_dtype()), ""),
    }
    for key, (value, stored, unit) in given.items():
        if value is None or _same(key, value, stored):
            continue
        shown = f"{value:g}" if key == "sampling_frequency" else str(value)
        have = f"{stored:g}" if key == "sampling_frequency" else str(stored)
        raise RecordingError(
            f"{p}: recording_options.{key}={shown} but the file stores {have} {unit}".rstrip()
            + f"; a file that stores its {key} is read with it: remove recording_options.{key} (or set it to {have})"
        )


def _same(key: str, value: Any, stored: Any) -> bool:
    if key == "sampling_frequency":
        return bool(np.isclose(float(value), float(stored), rtol=1e-6))
    if key == "dtype":
        try:
            return np.dtype(value) == stored
        except TypeError:
            return False
    return int(value) == int(stored)


def _validate(recording: Any, p: Path, check_finite: bool) -> None:
    """Rate, emptiness and (optionally) NaN/Inf: the failures that otherwise surface far downstream."""
    _valid_rate(p, recording.sampling_frequency, "the file")
    n_samples = sum(recording.get_num_samples(s) for s in range(recording.get_num_segments()))
    if recording.get_num_channels() == 0 or n_samples == 0:
        raise RecordingError(
            f"{p}: empty recording ({recording.get_num_channels()} channels, {n_samples} samples); "
            f"check the file was fully written, or pick another stream with recording_options.stream_name="
        )
    if check_finite and np.dtype(recording.get_dtype()).kind == "f":
        _check_finite(recording, p)


def _check_finite(recording: Any, p: Path) -> None:
    """Scan for NaN/Inf 10 s at a time so memory stays flat on long recordings."""
    fs = recording.sampling_frequency
    step = max(1, int(CHECK_CHUNK_S * fs))
    for seg in range(recording.get_num_segments()):
        n = recording.get_num_samples(seg)
        for start in range(0, n, step):
            chunk = recording.get_traces(segment_index=seg, start_frame=start, end_frame=min(n, start + step))
            finite = np.isfinite(chunk)
            if finite.all():
                continue
            rows, cols = np.nonzero(~finite)
            row = rows.min()
            col = cols[rows == row].min()
            kind = "NaN" if np.isnan(chunk[row, col]) else "Inf"
            where = f"segment {seg}, " if recording.get_num_segments() > 1 else ""
            raise RecordingError(
                f"{p}: {kind} samples in channel {recording.channel_ids[col]!r} (index {col}), first at "
                f"{where}t={(start + row) / fs:.6f} s (sample {start + row}); replace them (e.g. np.nan_to_num, or "
                f"cut the span with recording.frame_slice), or skip this check with {_how(check_finite=False)}"
            )


# --------------------------------------------------------------------------------------------------------------
# load_ground_truth
# --------------------------------------------------------------------------------------------------------------
