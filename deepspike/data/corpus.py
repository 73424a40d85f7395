"""Corpus stage: many recordings -> spike windows -> WebDataset tar shards + ``manifest.json``.

Each recording is processed independently (in a process pool) into its own shards, then a per-recording
record is written to ``out/.done/<id>.json``. That record is the unit of resumption: a killed build restarts
and skips every recording whose record exists, whose shards still have the size and sha256 it records (a damaged
shard is rebuilt) and whose source is unchanged. The record also stores the settings the recording was cut with
(``build_settings``): a resume asking for other settings stops with an error instead of mixing the two. Slices of
the recording list (``part``/``num_parts``) build the same way on cluster nodes; the manifest is written once all
are done. Pool workers end with the build (SIGTERM, Ctrl-C, or a killed parent).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from deepspike import __version__
from deepspike.data.shards import Block, file_digest, slug, write_shard
from deepspike.defaults import conf_field
from deepspike.errors import DeepSpikeError, OutputExistsError, cli_errors, differences
from deepspike.paths import CONF_DIR, write_json_atomic
from deepspike.provenance import source_fingerprint
from deepspike.spec import WindowSpec

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
DONE_DIR = ".done"
SHARD_DIR = "shards"


CORPUS_CONF = "corpus.yaml"


class SettingsMismatchError(DeepSpikeError):
    """A resumed build asks for other extraction / window / block settings than its finished recordings used."""


@dataclass
class CorpusConfig:
    """Validated corpus-build options; defaults and documentation live in ``conf/corpus.yaml`` (read from there)."""

    recordings: list[str] = conf_field(CORPUS_CONF, "recordings")
    out: str = conf_field(CORPUS_CONF, "out")
    overwrite: bool = conf_field(CORPUS_CONF, "overwrite")
    workers: int = conf_field(CORPUS_CONF, "workers")
    block_size: int = conf_field(CORPUS_CONF, "block_size")
    shard_spikes: int = conf_field(CORPUS_CONF, "shard_spikes")
    val_fraction: float = conf_field(CORPUS_CONF, "val_fraction")
    seed: int = conf_field(CORPUS_CONF, "seed")
    gt_tolerance_ms: float = conf_field(CORPUS_CONF, "gt_tolerance_ms")
    part: int = conf_field(CORPUS_CONF, "part")
    num_parts: int = conf_field(CORPUS_CONF, "num_parts")
    merge_only: bool = conf_field(CORPUS_CONF, "merge_only")
    on_error: str = conf_field(CORPUS_CONF, "on_error")
    progress: bool = conf_field(CORPUS_CONF, "progress")
    debug: bool = conf_field(CORPUS_CONF, "debug")  # read by main (cli_errors) before the config is validated
    recording_options: dict[str, Any] = conf_field(CORPUS_CONF, "recording_options")
    synthetic: dict[str, Any] = conf_field("synthetic/default.yaml")  # the `synthetic` group (conf/synthetic/)
    window: dict[str, Any] = conf_field(CORPUS_CONF, "window")
    extract: dict[str, Any] = conf_field("extract/default.yaml")  # the `extract` group (conf/extract/)

    def validate(self) -> None:
        checks = [
            (self.workers >= 1, f"workers must be >= 1, got {self.workers}"),
            (self.block_size >= 1, f"block_size must be >= 1, got {self.block_size}"),
            (self.shard_spikes >= self.block_size, "shard_spikes must be >= block_size"),
            (0.0 <= self.val_fraction < 1.0, f"val_fraction must be in [0, 1), got {self.val_fraction}"),
            (self.num_parts >= 1 and 0 <= self.part < self.num_parts, "need 0 <= part < num_parts"),
            (self.gt_tolerance_ms > 0, "gt_tolerance_ms must be > 0"),
            (bool(self.out), "out must name the corpus directory"),
            (self.on_error in ("raise", "skip"), f"on_error must be raise or skip, got {self.on_error!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise DeepSpikeError(f"corpus config: {msg} (see conf/corpus.yaml)")

    @classmethod
    def from_cfg(cls, cfg: Any) -> CorpusConfig:
        """From a Hydra/OmegaConf config or a plain dict."""
        from omegaconf import OmegaConf

        d = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else dict(cfg)
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        rec = d.get("recordings") or []
        d["recordings"] = [rec] if isinstance(rec, str) else list(rec)
        c = cls(**d)
        c.validate()
        return c


# ---------------------------------------------------------------------------------------------- inputs


def expand_recordings(patterns: Sequence[str]) -> list[Path]:
    """Paths and globs -> sorted unique existing paths; a pattern matching nothing is an error."""
    out: list[Path] = []
    for pat in patterns:
        hits = sorted(glob.glob(os.path.expanduser(str(pat)))) if glob.has_magic(str(pat)) else [str(pat)]
        hits = [h for h in hits if not h.endswith(".gt")]  # ground-truth folders sit beside recordings
        if not hits or not all(Path(h).exists() for h in hits):
            raise DeepSpikeError(f"recording {pat!r} matches no file; check the path or glob in `recordings=`")
        out.extend(Path(h) for h in hits)
    seen: set[Path] = set()
    return [p for p in out if not (p.resolve() in seen or seen.add(p.resolve()))]


def recording_id(path: Path) -> str:
    """Stable id: file stem + a short hash of the resolved path (two `rec.mat` in two folders differ)."""
    stem = path.name.split(".")[0] if path.is_file() else path.name
    return f"{slug(stem)}-{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"


def synthetic_recordings(opts: dict[str, Any], progress: bool, workers: int = 1) -> list[Path]:
    """Generate (or reuse) the synthetic source recordings asked for in ``synthetic`` (conf/synthetic/)."""
    n = int(opts.get("n", 0) or 0)
    if n <= 0:
        return []
    from deepspike.recording.synthetic import write_synthetic_recordings

    fs = opts.get("sampling_frequency", "random")
    kw = {"sampling_frequency": fs if fs == "random" else float(fs), "recipe": opts.get("recipe")}
    return list(
        write_synthetic_recordings(
            Path(opts.get("dir", "data/generated/synthetic")),
            n,
            seed=int(opts.get("seed", 0)),
            duration_s=float(opts.get("duration_s", 30.0)),
            workers=workers,
            **kw,
        )
    )


# ------------------------------------------------------------------------------------ one recording


def row_order(rec_id: str, n: int) -> np.ndarray:
    """The order a recording's ``n`` spikes are stored in: a permutation seeded from the recording id.

    Stored rows in random order make any contiguous run of rows a random sample of the recording, so the stream
    can mix batches by runs of rows (manifest ``row_order: shuffled``); each row keeps its peak time.
    """
    seed = int.from_bytes(hashlib.sha256(rec_id.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).permutation(n)


def _blocks(spikes: Any, rec_id: str, block_size: int) -> Iterator[Block]:
    n = len(spikes)
    order = row_order(rec_id, n)
    for start in range(0, n, block_size):
        sl = order[start : min(n, start + block_size)]
        yield Block(
            waves=spikes.waves[sl].astype(np.float16),
            times=spikes.sample_index[sl],
            chans=spikes.channel[sl],
            labels=spikes.labels[sl],
            meta={"recording": rec_id, "sampling_frequency": float(spikes.sampling_frequency)},
        )


def build_settings(cfg: CorpusConfig) -> dict[str, Any]:
    """Every option that decides what a recording's shards hold; stored per recording, compared on resume."""
    from deepspike.spikes.extract import ExtractParams

    return {
        "extract": asdict(ExtractParams.from_config(cfg.extract)),
        "window": WindowSpec.from_dict(cfg.window).to_dict(),
        "block_size": cfg.block_size,
        "shard_spikes": cfg.shard_spikes,
        "gt_tolerance_ms": cfg.gt_tolerance_ms,
        "recording_options": {k: v for k, v in cfg.recording_options.items() if v is not None},
    }


def build_recording(path: Path, out: Path, cfg: CorpusConfig) -> dict[str, Any]:
    """Extract one recording into its shards and write its done-record; return the record."""
    from deepspike.recording.ground_truth import load_ground_truth
    from deepspike.recording.readers import open_recording
    from deepspike.spikes.extract import ExtractParams, extract_spikes

    t0 = time.perf_counter()
    rec_id = recording_id(path)
    opts = {k: v for k, v in cfg.recording_options.items() if v is not None}
    recording = open_recording(path, **opts)
    gt = load_ground_truth(path, recording=recording)
    spec = WindowSpec.from_dict(cfg.window)
    params = ExtractParams.from_config(cfg.extract)
    spikes = extract_spikes(recording, params=params, spec=spec, gt=gt, tolerance_ms=cfg.gt_tolerance_ms)
    shards = []
    blocks = list(_blocks(spikes, rec_id, cfg.block_size))
    per_shard = max(1, cfg.shard_spikes // cfg.block_size)
    for k in range(0, max(1, len(blocks)), per_shard):
        rel = f"{SHARD_DIR}/{rec_id}-{k // per_shard:04d}.tar"
        info = write_shard(out / rel, blocks[k : k + per_shard], key_prefix=rec_id)
        shards.append({"path": rel, "recording": rec_id, **info})
    record = {
        "id": rec_id,
        "path": str(path),
        **source_fingerprint(path),
        "sampling_frequency": float(recording.get_sampling_frequency()),
        "num_channels": int(recording.get_num_channels()),
        "duration_s": float(recording.get_total_duration()),
        "num_spikes": len(spikes),
        "has_labels": gt is not None,
        "row_order": "shuffled",  # spikes stored in row_order(rec_id) order
        "settings": build_settings(cfg),  # what the shards were cut with (a resume must use the same)
        "noise_levels": [float(x) for x in np.atleast_1d(spikes.noise_levels)],
        "seconds": round(time.perf_counter() - t0, 3),
        "shards": shards,
    }
    write_json_atomic(out / DONE_DIR / f"{rec_id}.json", record)
    return record


def _done_record(out: Path, path: Path, settings: dict[str, Any], verify: bool = True) -> dict[str, Any] | None:
    """The finished record of ``path`` if it exists, was cut with ``settings``, and its shards and source are intact.

    A record cut with other settings stops the build (``SettingsMismatchError``): finishing it would give a corpus
    whose manifest claims settings some of its recordings were not cut with. ``verify``: check the size and
    sha256 of each shard (a damaged or truncated shard is rebuilt); else only the size.
    """
    f = out / DONE_DIR / f"{recording_id(path)}.json"
    if not f.exists():
        return None
    rec = json.loads(f.read_text())
    if "settings" not in rec or any("sha256" not in s for s in rec["shards"]):
        log.warning("%s was built by an older DeepSpike (no settings or shard hashes); rebuilding it", path)
        return None
    _check_settings(out, f, rec["settings"], settings)
    for s in rec["shards"]:
        shard = out / s["path"]
        if not shard.exists() or shard.stat().st_size != s["size"] or (verify and file_digest(shard) != {
            "size": s["size"], "sha256": s["sha256"]}):  # fmt: skip
            log.warning("%s is missing or damaged (size or sha256 differ from its record); rebuilding %s", shard, path)
            return None
    if source_fingerprint(path)["sha256"] != rec["sha256"]:
        log.warning("%s changed since it was built; rebuilding it", path)
        return None
    return rec


def _check_settings(out: Path, record: Path, saved: dict[str, Any], asked: dict[str, Any]) -> None:
    """Refuse to mix recordings cut with other settings into this corpus, naming the keys and the fix."""
    diff = differences(saved, asked)
    if diff:
        raise SettingsMismatchError(
            f"the corpus being built in {out} was started with other settings ({record} records them); this run "
            f"changes {'; '.join(diff)}. Fix: rerun with the same settings to resume, choose another `out=`, or "
            "pass `overwrite=true` to delete it and rebuild with the new settings."
        )


# ------------------------------------------------------------------------------------------- build


def _refuse_built(out: Path, overwrite: bool) -> None:
    """A finished corpus is never added to or rebuilt without ``overwrite``: checked before any work."""
    if (out / MANIFEST).exists() and not overwrite:
        raise OutputExistsError(
            f"{out / MANIFEST} exists: a corpus is already built in {out}. Use another `out=` or pass "
            "`overwrite=true` to delete and rebuild it."
        )


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Empty the corpus folders for ``overwrite``, create them; ``_refuse_built`` has run before any work."""
    if overwrite and ((out / MANIFEST).exists() or (out / DONE_DIR).is_dir()):  # a corpus, or a started build
        log.warning("overwrite=true: deleting the corpus in %s", out)
        for name in (SHARD_DIR, DONE_DIR):
            shutil.rmtree(out / name, ignore_errors=True)
        (out / MANIFEST).unlink(missing_ok=True)
    (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    (out / DONE_DIR).mkdir(parents=True, exist_ok=True)


def _run(todo: list[Path], out: Path, cfg: CorpusConfig) -> Iterator[tuple[Path, dict[str, Any] | Exception]]:
    """Build ``todo`` recordings, in a spawn-based pool when workers > 1 (fork + torch/BLAS threads hang).

    Yields ``(path, record)`` or, for a recording that failed, ``(path, exception)``. The workers end with the
    build: on SIGTERM / Ctrl-C / an error the pool's processes are terminated (finished recordings are kept and
    a rerun resumes), and each worker also exits on its own once its parent is gone (SIGKILL cannot be caught).
    """
    if cfg.workers == 1 or len(todo) <= 1:
        for p in todo:
            try:
                yield p, build_recording(p, out, cfg)
            except DeepSpikeError as e:
                yield p, e
        return
    pool = ProcessPoolExecutor(
        min(cfg.workers, len(todo)), mp_context=get_context("spawn"), initializer=_watch_parent,
        initargs=(os.getpid(),),
    )  # fmt: skip
    try:
        with _sigterm_raises():
            futures = {pool.submit(build_recording, p, out, cfg): p for p in todo}
            for fut in as_completed(futures):
                try:
                    yield futures[fut], fut.result()
                except DeepSpikeError as e:
                    yield futures[fut], e
    except BaseException:  # a signal, Ctrl-C, on_error=raise, the consumer stopped: do not wait for running builds
        _terminate(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _terminate(pool: ProcessPoolExecutor) -> None:
    """Terminate the pool's worker processes (``ProcessPoolExecutor.shutdown`` would wait for running tasks)."""
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        if proc.is_alive():
            proc.terminate()


def _watch_parent(parent: int, interval_s: float = 0.5) -> None:
    """Pool initializer: a daemon thread that ends this worker once ``parent`` is gone (killed with SIGKILL)."""
    import threading

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="deepspike-watch-parent", daemon=True).start()


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While building, SIGTERM (kill, SLURM preemption) unwinds like Ctrl-C, so the pool is shut down."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(
            f"deepspike-corpus: stopped by {signal.Signals(signum).name}; finished recordings are kept, "
            "rerun the same command to resume"
        )

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _failure(out: Path, path: Path, error: Exception, cfg: CorpusConfig) -> None:
    """Stop the build (on_error=raise) or record the failure so every part and the manifest see it (skip)."""
    if cfg.on_error == "raise":
        raise DeepSpikeError(
            f"building the corpus failed on {path}: {error} (pass on_error=skip to leave such recordings out; "
            "finished recordings are kept and a rerun resumes)"
        ) from error
    log.warning("skipping %s: %s", path, error)
    write_json_atomic(out / DONE_DIR / f"{recording_id(path)}.failed.json", {"path": str(path), "error": str(error)})


def _failed_record(out: Path, path: Path) -> dict[str, Any] | None:
    f = out / DONE_DIR / f"{recording_id(path)}.failed.json"
    return json.loads(f.read_text()) if f.exists() else None


def build_corpus(cfg: CorpusConfig) -> Path | None:
    """Build (or resume) this part of the corpus; return the manifest path once every part is done."""
    from tqdm.auto import tqdm

    out = Path(cfg.out)
    if not cfg.merge_only:
        _refuse_built(out, cfg.overwrite)  # before generating any synthetic source recording (minutes)
    paths = expand_recordings(cfg.recordings) + synthetic_recordings(cfg.synthetic, cfg.progress, cfg.workers)
    if not paths:
        raise DeepSpikeError("no recordings given: pass `recordings='[PATH_OR_GLOB,...]'` or `synthetic.n=N`")
    settings = build_settings(cfg)
    if not cfg.merge_only:
        _prepare_out(out, cfg.overwrite)
        mine = paths[cfg.part :: cfg.num_parts]
        todo = [p for p in mine if _done_record(out, p, settings) is None]
        log.info("%d recordings in this part, %d already built", len(mine), len(mine) - len(todo))
        bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc="corpus", unit="rec", disable=not cfg.progress)
        with closing(_run(todo, out, cfg)) as built:  # closing: an error here also stops the workers
            for path, rec in built:
                bar.update()
                if isinstance(rec, Exception):
                    _failure(out, path, rec, cfg)
                else:
                    (out / DONE_DIR / f"{rec['id']}.failed.json").unlink(missing_ok=True)
                    bar.set_postfix(spikes=rec["num_spikes"])
        bar.close()
    records = [_done_record(out, p, settings, verify=cfg.merge_only) for p in paths]  # todo checked them
    failed = [f for p, r in zip(paths, records, strict=True) if r is None and (f := _failed_record(out, p))]
    missing = sum(r is None for r in records) - len(failed)
    if missing:
        log.info("%d recordings still to build in other parts; manifest not written yet", missing)
        return None
    if len(failed) == len(paths):
        raise DeepSpikeError(f"no recording could be built ({failed[0]['path']}: {failed[0]['error']})")
    return write_manifest(out, [r for r in records if r is not None], cfg, failed)


def split_recordings(ids: Sequence[str], val_fraction: float, seed: int) -> dict[str, str]:
    """Recording id -> "train"/"val": a seeded permutation of the sorted ids, by recording (no leakage)."""
    ids = sorted(ids)
    n_val = 0 if val_fraction <= 0 or len(ids) < 2 else max(1, round(val_fraction * len(ids)))
    order = np.random.default_rng(seed).permutation(len(ids))
    val = {ids[i] for i in order[:n_val]}
    return {i: ("val" if i in val else "train") for i in ids}


def write_manifest(
    out: Path, records: list[dict[str, Any]], cfg: CorpusConfig, failed: Sequence[dict[str, Any]] = ()
) -> Path:
    """Write ``manifest.json`` atomically from finished recording records (``failed``: recordings left out).

    The settings it states are those every record was cut with (``_done_record`` refused any other)."""
    settings = build_settings(cfg)
    split = split_recordings([r["id"] for r in records], cfg.val_fraction, cfg.seed)
    shards, recordings = [], []
    for r in records:
        recordings.append({k: v for k, v in r.items() if k != "shards"} | {"split": split[r["id"]]})
        shards.extend(s | {"split": split[r["id"]]} for s in r["shards"])
    splits = {
        name: {
            "num_spikes": sum(s["num_spikes"] for s in shards if s["split"] == name),
            "num_shards": sum(s["split"] == name for s in shards),
            "num_recordings": sum(r["split"] == name for r in recordings),
        }
        for name in ("train", "val")
    }
    manifest = {
        "format": "deepspike-corpus",
        "format_version": 1,
        "tool_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "num_spikes": sum(s["num_spikes"] for s in shards),
        "window": settings["window"],
        "extract": settings["extract"],
        "block_size": cfg.block_size,
        "settings": settings,  # every option that decided the shards' content (resumes must match it)
        # each recording's rows in a seeded random order (row_order); records built before that are in time order
        "row_order": "shuffled" if all(r.get("row_order") == "shuffled" for r in records) else "stored",
        "val_fraction": cfg.val_fraction,
        "seed": cfg.seed,
        "splits": splits,
        "shards": shards,
        "recordings": recordings,
        "skipped": list(failed),  # recordings that could not be built (on_error=skip), with the reason
    }
    write_json_atomic(out / MANIFEST, manifest)
    log.info("corpus: %d spikes in %d shards -> %s", manifest["num_spikes"], len(shards), out / MANIFEST)
    return out / MANIFEST


# ------------------------------------------------------------------------- fine-tuning corpora (train.py path)
# A lab's recordings become a small content-addressed corpus cut with the parent's window spec; part of every
# recording's time is held out for validation and the collapse guard.


def main() -> None:
    """Console script ``deepspike-corpus`` (a Hydra app over ``conf/corpus.yaml``)."""
    import hydra

    @hydra.main(config_path=str(CONF_DIR), config_name="corpus", version_base="1.3")
    def _app(cfg: Any) -> None:
        with cli_errors("deepspike-corpus", bool(cfg.get("debug", False))):  # one line naming the file and the fix
            manifest = build_corpus(CorpusConfig.from_cfg(cfg))
        if manifest is not None:
            m = json.loads(manifest.read_text())
            print(f"corpus: {m['num_spikes']} spikes, {len(m['shards'])} shards, {len(m['recordings'])} recordings")
            print(f"manifest: {manifest}")

    _app()


if __name__ == "__main__":
    main()
