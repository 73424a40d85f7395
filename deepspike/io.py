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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepspike.errors import RecordingError

logger = logging.getLogger(__name__)

PathLike = str | Path
CHECK_CHUNK_S = 10.0  # seconds read at a time by the NaN/Inf check
REALIGN_BAND_HZ = (300.0, 5000.0)  # band used to find the GT waveform extremum
REALIGN_WINDOW_MS = 1.5  # extremum searched within +0..+1.5 ms after the stored (onset) time
REALIGN_MIN_SNR = 4.0  # a unit's mean extremum must reach this many noise sigmas to be realigned
RAW_BINARY_EXTENSIONS = (".bin", ".dat", ".raw")
_MAX_CHANNELS_FIRST = 512  # a 2-D array with fewer rows than columns and <= this many rows is channels x samples


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

    ``sampling_frequency`` is required for formats that do not store it (.npy, raw binary) and overrides the
    rate stored in a .mat file (some benchmark excerpts carry a wrong ``dt``). ``dtype`` and ``num_channels``
    describe raw binary files. Extra ``kw`` go to the underlying reader, e.g. ``stream_name=`` / ``stream_id=``
    for multi-stream formats. ``check_finite`` scans float recordings for NaN/Inf, 10 s at a time (None = True).
    ``allow_pickle`` opens ``.pkl``/``.pickle`` dumps and SpikeInterface descriptions naming classes outside
    ``SAFE_SI_CLASSES``: both run code stored in the file, so only for files the user made.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise RecordingError(f"{p}: no such file or folder; check the path (relative paths start at {Path.cwd()})")
    if sampling_frequency is not None:
        sampling_frequency = _valid_rate(p, sampling_frequency, "the sampling_frequency= argument")
    recording = _dispatch(p, sampling_frequency, dtype, num_channels, kw, bool(allow_pickle))
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
        return _open_neo(_NEO_BY_EXT[ext], p, fs, kw)
    if ext in _H5_EXTENSIONS:
        return _open_neo(_sniff_h5(p), p, fs, kw)
    if ext in RAW_BINARY_EXTENSIONS:
        sidecar = _binary_sidecar(p)
        if sidecar is not None:
            return _open_neo(sidecar[0], sidecar[1], fs, kw)
        return _open_binary(p, fs, dtype, num_channels, kw)
    probed = _probe_neo(p, ext)
    if probed is not None:
        return _open_neo(probed, p, fs, kw)
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


def _how(**options: Any) -> str:
    """How to pass reader options, on the command line (``recording_options.KEY=``) and in Python."""
    cli = " ".join(f"recording_options.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in options.items())
    api = ", ".join(f"{k}={v!r}" for k, v in options.items())
    return f"{cli} on the command line (open_recording(path, {api}) in Python)"


def _extension(p: Path) -> str:
    """Lower-case extension, keeping the multi-part ones readers care about (.ap.bin, .xdat.json)."""
    name = p.name.lower()
    for multi in (".ap.bin", ".lf.bin", ".nidq.bin", ".xdat.json"):
        if name.endswith(multi):
            return multi
    return p.suffix.lower()


def _valid_rate(p: Path, fs: Any, where: str) -> float:
    """A finite positive float, or an error that names ``sampling_frequency=``."""
    try:
        value = float(np.asarray(fs).ravel()[0]) if np.size(fs) == 1 else float("nan")
    except (TypeError, ValueError):
        value = float("nan")
    if not np.isfinite(value) or value <= 0:
        raise RecordingError(
            f"{p}: invalid sampling rate {fs!r} from {where}; pass a positive rate in Hz, "
            f"e.g. {_how(sampling_frequency=30000.0)}"
        )
    return value


def _require_rate(p: Path, fs: float | None, what: str) -> float:
    if fs is None:
        raise RecordingError(
            f"{p}: {what} files do not store a sampling rate; pass it in Hz, e.g. {_how(sampling_frequency=30000.0)}"
        )
    return fs


def _wrap(p: Path, what: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """Call a library reader; turn its errors into RecordingError naming the file and the fix."""
    try:
        return fn(*args, **kw)
    except RecordingError:
        raise
    except ImportError as e:
        pkg = getattr(e, "name", None) or "the missing package"
        raise RecordingError(
            f"{p}: reading {what} needs an optional package that is not installed ({e}); "
            f"install it, e.g. `pip install {pkg}`"
        ) from e
    except TypeError as e:
        if "unexpected keyword" in str(e) or "positional argument" in str(e):
            raise RecordingError(
                f"{p}: the {what} reader rejected the extra arguments {sorted(kw)} ({e}); remove them"
            ) from e
        raise _corrupt(p, what, e) from e
    except Exception as e:
        if "several streams" in str(e):
            raise RecordingError(
                f"{p} holds several {what} streams; pick one with {_how(stream_name='NAME')} ({e})"
            ) from e
        raise _corrupt(p, what, e) from e


def _corrupt(p: Path, what: str, e: Exception) -> RecordingError:
    return RecordingError(
        f"{p}: cannot read it as {what} ({type(e).__name__}: {e}). The file may be truncated or corrupt, or not "
        f"a {what} file: check it opens in its acquisition software, or re-export it"
    )


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
        return _open_neo(_OPENEPHYS, p, None, kw, target=p)
    if "info.rhd" in names:
        return _open_neo(_INTAN, p / "info.rhd", None, kw)
    if ".meta" in suffixes:
        return _open_neo(_SPIKEGLX, p, None, kw, target=p)
    if {".tev", ".tsq", ".tbk", ".sev"} & suffixes:
        return _open_neo(_TDT, p, None, kw, target=p)
    if ".ncs" in suffixes:
        return _open_neo(_NEURALYNX, p, None, kw, target=p)
    if ".mpx" in suffixes:
        return _open_neo(_ALPHAOMEGA, p, None, kw, target=p)
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


def _open_neo(fmt: _Neo, p: Path, fs: float | None, kw: dict[str, Any], target: Path | None = None) -> Any:
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
    if fs is not None and not np.isclose(fs, recording.sampling_frequency, rtol=1e-6):
        logger.warning(
            "%s: sampling_frequency=%s ignored; %s files store their rate (%s Hz)",
            p,
            fs,
            fmt.name,
            recording.sampling_frequency,
        )
    return recording


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


def __getattr__(name: str) -> Any:
    """``NpyRecording`` is built on first use, so importing deepspike.io does not import SpikeInterface."""
    if name == "NpyRecording":  # then cached in globals(): this hook only runs for names not found there
        cls = _npy_recording_class()
        cls.__module__, cls.__qualname__, cls.__name__ = __name__, name, name
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _open_npy(p: Path, fs: float | None, num_channels: int | None) -> Any:
    """Memory-map the .npy payload as a binary recording, so an hour-long file never lands in RAM."""
    fs = _require_rate(p, fs, "NumPy .npy")
    try:
        arr = np.load(p, mmap_mode="r")
    except Exception as e:
        raise _corrupt(p, "NumPy .npy", e) from e
    if not isinstance(arr, np.memmap) or arr.dtype.kind not in "iuf":
        raise RecordingError(
            f"{p}: holds {type(arr).__name__} of dtype {getattr(arr, 'dtype', '?')}, not a numeric array; "
            f"save the traces with np.save(path, traces) as integers or floats"
        )
    if arr.ndim not in (1, 2):
        raise RecordingError(
            f"{p}: array of shape {arr.shape}; expected 1-D (one channel) or 2-D (samples x channels): reshape it"
        )
    channels_first = _channels_first(p, arr.shape, num_channels) if arr.ndim == 2 else False
    if arr.size == 0:
        raise RecordingError(f"{p}: empty array of shape {arr.shape}; the file holds no samples")
    # Memory order decides the layout of the flat payload: C-order samples x channels is interleaved.
    fortran = arr.ndim == 2 and arr.flags.f_contiguous and not arr.flags.c_contiguous
    if arr.ndim == 2 and channels_first != fortran:  # each channel contiguous: not SpikeInterface's binary layout
        return _wrap(p, "NumPy .npy", __getattr__("NpyRecording"), str(p), fs, channels_first)
    from spikeinterface.core import BinaryRecordingExtractor

    n_channels = 1 if arr.ndim == 1 else (arr.shape[0] if channels_first else arr.shape[1])
    return _wrap(
        p,
        "NumPy .npy",
        BinaryRecordingExtractor,
        file_paths=[p],
        sampling_frequency=fs,
        dtype=arr.dtype.str,
        num_channels=n_channels,
        time_axis=0,
        file_offset=int(arr.offset),
    )


def _npy_recording_class() -> type:
    """A recording over a memory-mapped 2-D .npy whose channels are contiguous (channels x samples in C order,
    samples x channels in Fortran order).

    SpikeInterface's binary reader with ``time_axis=1`` is right only for whole-file reads: its chunks take a
    contiguous byte range, i.e. samples of other channels and times. Slicing the memmap is right for any chunk.
    """
    from spikeinterface.core import BaseRecording, BaseRecordingSegment

    class _Segment(BaseRecordingSegment):
        def __init__(self, traces: np.ndarray, fs: float) -> None:
            super().__init__(sampling_frequency=fs)
            self._traces = traces  # (samples, channels) view of the memmap: nothing is read until sliced

        def get_num_samples(self) -> int:
            return int(self._traces.shape[0])

        def get_traces(self, start_frame: Any = None, end_frame: Any = None, channel_indices: Any = None) -> Any:
            block = self._traces[start_frame:end_frame]
            if channel_indices is not None:
                block = block[:, channel_indices]
            return np.ascontiguousarray(block)

    class Recording(BaseRecording):
        def __init__(self, file_path: str, sampling_frequency: float, channels_first: bool) -> None:
            arr = np.load(file_path, mmap_mode="r", allow_pickle=False)
            traces = arr.T if channels_first else arr
            super().__init__(sampling_frequency, list(range(traces.shape[1])), arr.dtype)
            self.add_recording_segment(_Segment(traces, sampling_frequency))
            self._kwargs = {
                "file_path": str(Path(file_path).absolute()),
                "sampling_frequency": float(sampling_frequency),
                "channels_first": bool(channels_first),
            }

    return Recording


def _channels_first(p: Path, shape: tuple[int, ...], num_channels: int | None) -> bool:
    """Whether a 2-D array is channels x samples: an explicit ``num_channels`` decides, else its shape."""
    rows, cols = shape
    if num_channels is not None and num_channels in (rows, cols) and rows != cols:
        return num_channels == rows
    if rows < cols and rows <= _MAX_CHANNELS_FIRST:
        logger.info("%s: array of shape %s read as channels x samples (%d channels)", p, shape, rows)
        return True
    return False


def _open_binary(p: Path, fs: float | None, dtype: Any, num_channels: int | None, kw: dict[str, Any]) -> Any:
    """Raw interleaved samples: rate, dtype and channel count must come from the caller."""
    fs = _require_rate(p, fs, "raw binary")
    missing = [name for name, v in (("dtype", dtype), ("num_channels", num_channels)) if v is None]
    if missing:
        raise RecordingError(
            f"{p}: raw binary files do not store {' or '.join(missing)}; pass them, "
            f"e.g. {_how(sampling_frequency=fs, dtype='int16', num_channels=32)}"
        )
    try:
        itemsize = np.dtype(dtype).itemsize
    except TypeError as e:
        raise RecordingError(f"{p}: dtype={dtype!r} is not a NumPy dtype; pass e.g. {_how(dtype='int16')}") from e
    if not isinstance(num_channels, int | np.integer) or num_channels < 1:
        raise RecordingError(f"{p}: num_channels={num_channels!r}; pass a positive count, e.g. {_how(num_channels=32)}")
    payload = p.stat().st_size - int(kw.get("file_offset", 0))
    frame = itemsize * int(num_channels)
    if payload <= 0:
        raise RecordingError(f"{p}: empty file (no samples after file_offset); check the path")
    if payload % frame:
        raise RecordingError(
            f"{p}: size {payload} bytes is not a whole number of frames of {num_channels} x {np.dtype(dtype)} "
            f"({frame} bytes); check recording_options.dtype= and recording_options.num_channels= "
            f"(and file_offset= for a header)"
        )
    import spikeinterface.extractors as se

    return _wrap(
        p, "raw binary", se.read_binary, p, sampling_frequency=fs, dtype=dtype, num_channels=num_channels, **kw
    )


# --- Wave_clus / Quiroga .mat -------------------------------------------------------------------------------------


def _read_mat(p: Path) -> dict[str, Any]:
    """Variables of a MATLAB file as plain arrays / dicts (v5 via scipy, v7.3 via h5py)."""
    import scipy.io

    try:
        major, _minor = scipy.io.matlab.matfile_version(str(p))
    except Exception as e:
        raise _corrupt(p, "MATLAB .mat", e) from e
    if major == 2:
        return _read_mat_h5(p)
    try:
        return scipy.io.loadmat(str(p), simplify_cells=True)
    except Exception as e:
        raise _corrupt(p, "MATLAB .mat", e) from e


def _read_mat_h5(p: Path) -> dict[str, Any]:
    """MATLAB v7.3 files are HDF5; arrays are stored transposed (column-major)."""
    try:
        import h5py
    except ImportError as e:
        raise RecordingError(f"{p}: is a MATLAB v7.3 (HDF5) file; reading it needs h5py: `pip install h5py`") from e

    def convert(f: Any, node: Any) -> Any:
        if isinstance(node, h5py.Group):
            return {k: convert(f, v) for k, v in node.items() if not k.startswith("#")}
        value = node[()]
        if isinstance(value, np.ndarray) and value.dtype == h5py.ref_dtype:  # cell array: follow references
            return [convert(f, f[ref]) for ref in value.T.ravel()]
        value = np.asarray(value).T
        return value.item() if value.size == 1 else np.squeeze(value) if 1 in value.shape else value

    try:
        with h5py.File(p, "r") as f:
            return {k: convert(f, v) for k, v in f.items() if not k.startswith("#")}
    except OSError as e:
        raise _corrupt(p, "MATLAB v7.3 .mat", e) from e


def _mat_rate(p: Path, m: dict[str, Any]) -> float | None:
    """Rate from the Wave_clus / Quiroga / CBP fields: samplingInterval (ms), sr, par.sr (Hz), dt (s)."""
    if "samplingInterval" in m:
        interval = _valid_rate(p, m["samplingInterval"], "its `samplingInterval` (ms)")
        return _snap_rate(p, 1000.0 / interval, interval)
    par = m.get("par")
    for where, value in (("sr", m.get("sr")), ("par.sr", par.get("sr") if isinstance(par, dict) else None)):
        if value is not None:
            return _valid_rate(p, value, f"its `{where}` (Hz)")
    for key in ("fs", "Fs", "sampling_frequency", "srate"):
        if key in m:
            return _valid_rate(p, m[key], f"its `{key}` (Hz)")
    if "dt" in m:
        return 1.0 / _valid_rate(p, m["dt"], "its `dt` (s)")
    return None


def _snap_rate(p: Path, fs: float, interval_ms: float) -> float:
    """Quiroga files round the interval (0.0417 ms); snap to the whole kHz it stands for."""
    nearest = round(fs / 1000.0) * 1000.0
    if nearest > 0 and fs != nearest and abs(fs - nearest) / nearest < 2e-3 and round(interval_ms, 4) == interval_ms:
        logger.info("%s: samplingInterval %s ms read as %g Hz (rounded interval)", p, interval_ms, nearest)
        return nearest
    return fs


def _as_samples_by_channels(p: Path, data: Any) -> np.ndarray:
    arr = np.asarray(data)
    if arr.dtype.kind not in "iuf":
        raise RecordingError(f"{p}: `data` is {arr.dtype}, not numeric traces; store `data` as a numeric matrix")
    arr = np.squeeze(arr)
    if arr.ndim == 1:
        return arr[:, None]
    if arr.ndim != 2:
        raise RecordingError(f"{p}: `data` has shape {arr.shape}; store it as channels x samples (or 1 x N)")
    return arr.T if _channels_first(p, arr.shape, None) else arr


def _open_mat(p: Path, fs: float | None) -> Any:
    """Wave_clus / Quiroga layout: ``data`` (1 x N or channels x N) plus a rate field (or ``sampling_frequency=``)."""
    m = _read_mat(p)
    if "data" not in m:
        names = sorted(k for k in m if not k.startswith("__"))
        raise RecordingError(
            f"{p}: no `data` variable (found {names}); the Wave_clus / Quiroga layout stores the trace in `data`: "
            f"rename it, or save the traces as .npy"
        )
    file_fs = _mat_rate(p, m)
    if fs is None and file_fs is None:
        raise RecordingError(
            f"{p}: no samplingInterval / sr / par.sr / dt field; pass the rate, e.g. {_how(sampling_frequency=24000.0)}"
        )
    if fs is not None and file_fs is not None and not np.isclose(fs, file_fs, rtol=1e-6):
        logger.info("%s: sampling_frequency=%g overrides the file's %g Hz", p, fs, file_fs)
    traces = np.ascontiguousarray(_as_samples_by_channels(p, m["data"]), dtype=np.float32)
    if traces.size == 0:
        raise RecordingError(f"{p}: `data` is empty; the file holds no samples")
    from spikeinterface.core import NumpyRecording

    recording = NumpyRecording([traces], sampling_frequency=fs if fs is not None else file_fs)
    recording.annotate(source_path=str(p), source_format="wave_clus_mat")
    return recording


# --- validation --------------------------------------------------------------------------------------------------


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

_GT_LABEL_KEYS = ("spike_class", "spike_labels", "spike_clusters", "labels")


def load_ground_truth(
    path: PathLike, recording: Any | None = None, gt: PathLike | None = None, *, realign: bool = True
) -> Any | None:
    """Ground truth of the recording at ``path`` as a ``BaseSorting`` (rate = the recording's), or None.

    Sources, first found wins: ``gt=`` (SpikeInterface sorting folder, ``.npz`` with ``spike_times`` in samples
    plus ``spike_class``/``spike_labels``, SpikeForest firings ``.npy`` (3, N), Wave_clus ``times_*.mat`` or a
    Quiroga-layout ``.mat``), a sibling ``<path>.gt/`` folder or ``<path>.gt.npz``, then GT carried by the
    recording file itself (Quiroga / Wave_clus / CBP ``.mat``, MEArec ``.h5``). Quiroga times mark the waveform
    onset, 1-based: with ``realign`` they are moved to the waveform's extremum (see ``_realign_to_peak``).
    Pass ``recording`` (from ``open_recording``) when the file needs ``sampling_frequency=``.
    """
    p = Path(path).expanduser()
    source = _gt_source(p, gt)
    if source is None and _extension(p) not in (".mat", *_H5_EXTENSIONS):
        return None
    if recording is None:
        recording = _recording_for_gt(p)
    fs = float(recording.sampling_frequency)
    if source is not None:
        sorting = _load_gt_file(source, recording, realign=False)
    elif _extension(p) == ".mat":
        sorting = _load_gt_file(p, recording, realign=realign)
    else:
        sorting = _mearec_gt(p)
    if sorting is None:
        return None
    return _check_gt(sorting, recording, fs, source or p)


def _gt_source(p: Path, gt: PathLike | None) -> Path | None:
    """The explicit ``gt=`` path, else a sibling ``<path>.gt/`` / ``<path>.gt.npz`` (with or without suffix)."""
    if gt is not None:
        g = Path(gt).expanduser()
        if not g.exists():
            raise RecordingError(f"{g}: ground-truth path not found; check gt= (given for recording {p})")
        return g
    base = Path(str(p).rstrip("/"))
    for stem in dict.fromkeys((base, base.with_suffix("") if base.suffix else base)):
        for candidate in (Path(f"{stem}.gt"), Path(f"{stem}.gt.npz")):
            if candidate.exists() and candidate != p:
                return candidate
    return None


def _recording_for_gt(p: Path) -> Any:
    try:
        return open_recording(p, check_finite=False)
    except RecordingError as e:
        raise RecordingError(
            f"{e}\n(load_ground_truth needs the recording's rate and length: pass "
            f"recording=open_recording(path, sampling_frequency=...), or recording_options.sampling_frequency=... "
            f"on the command line)"
        ) from e


def _load_gt_file(g: Path, recording: Any, realign: bool) -> Any | None:
    """Dispatch on the GT file type; returns a sorting with the recording's rate."""
    fs = float(recording.sampling_frequency)
    if g.is_dir():
        return _si_sorting(g, fs)
    ext = g.suffix.lower()
    if ext == ".npz":
        return _npz_sorting(g, fs)
    if ext == ".npy":
        return _firings_sorting(g, fs)
    if ext == ".mat":
        return _mat_sorting(g, recording, realign)
    raise RecordingError(
        f"{g}: unknown ground-truth format {ext!r}; pass gt= as a SpikeInterface sorting folder, an .npz with "
        f"spike_times (samples) and spike_class, a SpikeForest firings .npy of shape (3, N), or a .mat"
    )


def _make_sorting(times: np.ndarray, labels: np.ndarray, fs: float) -> Any:
    from spikeinterface.core import NumpySorting

    order = np.argsort(times, kind="stable")
    times, labels = np.asarray(times, np.int64)[order], np.asarray(labels)[order]
    if labels.dtype.kind == "f" and np.all(labels == np.round(labels)):
        labels = labels.astype(np.int64)
    return NumpySorting.from_samples_and_labels([times], [labels], fs)


def _si_sorting(g: Path, fs: float) -> Any:
    from spikeinterface.core import BaseSorting, NumpySorting

    obj = _si_load(g, "sorting")
    if not isinstance(obj, BaseSorting):
        raise RecordingError(
            f"{g}: this SpikeInterface folder holds a {type(obj).__name__}, not a sorting; pass gt= a folder "
            f"saved by sorting.save()"
        )
    if np.isclose(obj.sampling_frequency, fs, rtol=1e-9):
        return obj
    logger.warning("%s: ground truth at %g Hz re-labelled to the recording's %g Hz", g, obj.sampling_frequency, fs)
    return NumpySorting(obj.to_spike_vector(), fs, obj.unit_ids)


def _npz_sorting(g: Path, fs: float) -> Any:
    try:
        z = np.load(g, allow_pickle=False)
        keys = set(z.files)
    except Exception as e:
        raise _corrupt(g, "ground-truth .npz", e) from e
    if "spike_indexes_seg0" in keys:  # SpikeInterface's NpzSortingExtractor layout
        import spikeinterface.extractors as se

        return _si_sorting_from(_wrap(g, "SpikeInterface .npz sorting", se.read_npz_sorting, g), fs)
    label_key = next((k for k in _GT_LABEL_KEYS if k in keys), None)
    if "spike_times" not in keys or label_key is None:
        raise RecordingError(
            f"{g}: ground-truth .npz needs `spike_times` (samples) and `spike_class` or `spike_labels`; found "
            f"{sorted(keys)}: re-save it with np.savez(path, spike_times=..., spike_class=...)"
        )
    times, labels = np.ravel(z["spike_times"]), np.ravel(z[label_key])
    _check_same_length(g, times, labels)
    return _make_sorting(times, labels, fs)


def _si_sorting_from(sorting: Any, fs: float) -> Any:
    from spikeinterface.core import NumpySorting

    return NumpySorting(sorting.to_spike_vector(), fs, sorting.unit_ids)


def _firings_sorting(g: Path, fs: float) -> Any:
    """SpikeForest / MountainSort firings: rows (channel, time in samples, label)."""
    try:
        firings = np.load(g, allow_pickle=False)
    except Exception as e:
        raise _corrupt(g, "SpikeForest firings .npy", e) from e
    if firings.ndim != 2 or firings.shape[0] != 3:
        raise RecordingError(
            f"{g}: firings array of shape {firings.shape}; expected (3, N) rows (channel, time, label), as "
            f"SpikeForest's firings_true: transpose or re-save it"
        )
    return _make_sorting(firings[1], firings[2], fs)


def _check_same_length(g: Path, times: np.ndarray, labels: np.ndarray) -> None:
    if len(times) != len(labels):
        raise RecordingError(
            f"{g}: {len(times)} spike times but {len(labels)} labels; both must have one entry per spike"
        )


def _first_cell(value: Any) -> np.ndarray:
    """Quiroga stores ``spike_times`` / ``spike_class`` in cells; the first cell holds times / classes."""
    while isinstance(value, list | tuple) or (isinstance(value, np.ndarray) and value.dtype == object):
        value = value[0] if len(value) else np.array([])
    return np.atleast_1d(np.asarray(value)).ravel()


def _mat_sorting(g: Path, recording: Any, realign: bool) -> Any | None:
    """GT in a .mat: Quiroga (``spike_times``/``spike_class``), CBP (``true_*``), Wave_clus ``cluster_class``."""
    m = _read_mat(g)
    fs = float(recording.sampling_frequency)
    if "cluster_class" in m:  # Wave_clus output: columns (class, time in ms)
        cc = np.atleast_2d(np.asarray(m["cluster_class"], dtype=float))
        return _make_sorting(np.round(cc[:, 1] * fs / 1000.0), cc[:, 0], fs)
    pairs = (("spike_times", "spike_class"), ("true_spike_times", "true_spike_class"))
    tkey, ckey = next(((t, c) for t, c in pairs if t in m), (None, None))
    if tkey is None:
        return None
    times = _first_cell(m[tkey]).astype(np.int64)
    labels = _first_cell(m[ckey]) if ckey in m else np.ones(len(times), np.int64)
    _check_same_length(g, times, labels)
    one_based = len(times) > 0 and times.min() >= 1  # MATLAB indices; a 0 means the writer used 0-based
    if one_based:
        times = times - 1
    labels = labels.astype(np.int64) if labels.dtype.kind in "iub" else labels
    shifts: dict[Any, int] = {}
    if realign and len(times):
        traces = recording.get_traces(segment_index=0)
        times, shifts = _realign_to_peak(traces, fs, times, labels)
    sorting = _make_sorting(times, labels, fs)
    sorting.annotate(
        gt_source=str(g),
        gt_index_base=1 if one_based else 0,
        gt_time_reference=_time_reference(shifts, labels),
        gt_realign_shift_samples={str(k): int(v) for k, v in shifts.items()},
    )
    if shifts:
        sorting.set_property("realign_shift_samples", np.array([shifts.get(u, 0) for u in sorting.unit_ids]))
    return sorting


def _time_reference(shifts: dict[Any, int], labels: np.ndarray) -> str:
    if not shifts:
        return "as_stored"
    return "peak" if len(shifts) == len(np.unique(labels)) else "mixed"


def _realign_to_peak(
    traces: np.ndarray, fs: float, times: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, dict[Any, int]]:
    """Move onset-marked GT times to the waveform's dominant extremum, one shift per unit.

    Quiroga's ``spike_times`` mark the onset, about 0.9 ms before the peak, while detectors and the canonical
    window are peak-centred. Per unit: band-pass 300-5000 Hz (zero-phase), take the unit's mean snippet over
    +0..+1.5 ms after the stored times to find the dominant channel and polarity, then shift by the median
    per-spike offset of that extremum. A unit whose window holds no clear extremum (mean below
    ``REALIGN_MIN_SNR`` noise sigmas, or at the window's edge) follows another convention (e.g. the Harris
    excerpt marks times 2.8 ms after the trough) and keeps its stored times, with a warning.
    """
    from scipy.signal import butter, sosfiltfilt

    high = min(REALIGN_BAND_HZ[1], 0.45 * fs)
    sos = butter(3, [REALIGN_BAND_HZ[0], high], btype="bandpass", fs=fs, output="sos")
    filtered = sosfiltfilt(sos, np.asarray(traces, dtype=np.float64), axis=0)
    noise = np.median(np.abs(filtered), axis=0) / 0.6745 + 1e-12
    width = round(REALIGN_WINDOW_MS * 1e-3 * fs)
    offsets = np.arange(width + 1)
    out = times.copy()
    shifts: dict[Any, int] = {}
    for unit in np.unique(labels):
        sel = labels == unit
        t = times[sel]
        t = t[(t >= 0) & (t + width < len(filtered))]
        if not len(t):
            continue
        snippets = filtered[t[:, None] + offsets]  # (spikes, offsets, channels)
        mean = snippets.mean(axis=0)
        k, ch = np.unravel_index(np.argmax(np.abs(mean)), mean.shape)
        if abs(mean[k, ch]) < REALIGN_MIN_SNR * noise[ch] or k in (0, width):
            logger.warning(
                "ground-truth unit %s: no clear waveform extremum within +0..+%g ms of its stored times "
                "(%.1f noise sigmas at +%d samples); times kept as stored",
                unit,
                REALIGN_WINDOW_MS,
                abs(mean[k, ch]) / noise[ch],
                k,
            )
            continue
        sign = 1.0 if mean[k, ch] >= 0 else -1.0
        per_spike = np.argmax(sign * snippets[:, :, ch], axis=1)
        shift = int(np.sort(per_spike)[(len(per_spike) - 1) // 2])  # lower median: deterministic on ties
        shifts[unit.item() if hasattr(unit, "item") else unit] = shift
        out[sel] = times[sel] + shift
    return out, shifts


def _mearec_gt(p: Path) -> Any | None:
    """MEArec files carry their ground-truth sorting."""
    try:
        fmt = _sniff_h5(p)
    except RecordingError:
        return None
    if fmt.reader != "read_mearec":
        return None
    import spikeinterface.extractors as se

    return _wrap(p, "MEArec", se.read_mearec, p)[1]


def _check_gt(sorting: Any, recording: Any, fs: float, where: Path) -> Any:
    """Same rate as the recording; spikes outside the recording are dropped with a warning."""
    from spikeinterface.core import NumpySorting

    if not np.isclose(sorting.sampling_frequency, fs, rtol=1e-9):
        sorting = _si_sorting_from(sorting, fs)
    spikes = sorting.to_spike_vector()
    if not len(spikes):
        return sorting
    n = np.array([recording.get_num_samples(s) for s in range(recording.get_num_segments())])
    inside = (spikes["sample_index"] >= 0) & (spikes["sample_index"] < n[spikes["segment_index"]])
    if inside.all():
        return sorting
    if not inside.any():
        raise RecordingError(
            f"{where}: no ground-truth spike falls inside the recording ({n.sum()} samples at {fs:g} Hz); check "
            f"the sampling rate (recording_options.sampling_frequency=) and that the spike times are in samples"
        )
    logger.warning("%s: %d ground-truth spikes outside the recording dropped", where, int((~inside).sum()))
    kept = NumpySorting(spikes[inside], fs, sorting.unit_ids)
    for key in sorting.get_annotation_keys():
        kept.annotate(**{key: sorting.get_annotation(key)})
    for prop in sorting.get_property_keys():
        kept.set_property(prop, sorting.get_property(prop))
    return kept
