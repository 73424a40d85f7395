"""Corpus builds: real synthetic recordings -> real tar shards + manifest; resume, parts, overwrite, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deepspike.data.corpus import DONE_DIR, MANIFEST, CorpusConfig, build_corpus, split_recordings
from deepspike.data.shards import iter_blocks
from deepspike.errors import DeepSpikeError, OutputExistsError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from deepspike.recording.synthetic import write_synthetic_recordings

    return list(write_synthetic_recordings(tmp_path_factory.mktemp("rec"), 4, seed=3, duration_s=6.0))


def _cfg(recs: list[Path], out: Path, **kw: object) -> CorpusConfig:
    base = {"recordings": [str(p) for p in recs], "out": str(out), "block_size": 256, "shard_spikes": 512}
    base["progress"] = False
    return CorpusConfig.from_cfg(base | kw)


def _read_all(out: Path) -> dict[str, list]:
    m = json.loads((out / MANIFEST).read_text())
    got: dict[str, list] = {}
    for s in m["shards"]:
        got[s["path"]] = [(b.waves.copy(), b.times.copy(), b.labels.copy()) for b in iter_blocks(str(out / s["path"]))]
    return got


def _comparable(manifest: dict) -> dict:
    m = {k: v for k, v in manifest.items() if k != "created"}
    m["recordings"] = [{k: v for k, v in r.items() if k != "seconds"} for r in m["recordings"]]
    return m


@pytest.fixture(scope="module")
def clean(recordings: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "corpus"
    assert build_corpus(_cfg(recordings, out)) == out / MANIFEST
    return out


def test_manifest_counts_match_shards(clean: Path, recordings: list[Path]) -> None:
    m = json.loads((clean / MANIFEST).read_text())
    assert m["num_spikes"] == sum(s["num_spikes"] for s in m["shards"]) > 0
    assert len(m["recordings"]) == len(recordings)
    assert {r["split"] for r in m["recordings"]} == {"train", "val"}
    assert m["window"]["n_before"] == 8 and m["window"]["sampling_frequency"] == 24000.0
    for s in m["shards"]:
        blocks = list(iter_blocks(str(clean / s["path"])))
        assert [len(b) for b in blocks] == s["block_sizes"]
        assert sum(s["block_sizes"]) == s["num_spikes"] <= 512
        assert all(b.waves.dtype == np.float16 and b.waves.shape[1] == 20 for b in blocks)
    for r in m["recordings"]:
        assert r["num_spikes"] == sum(s["num_spikes"] for s in m["shards"] if s["recording"] == r["id"])
        assert r["has_labels"] and len(r["sha256"]) == 64 and r["size"] > 0
    # Most detected spikes of a clean synthetic recording carry a ground-truth label.
    labels = np.concatenate([b[2] for blocks in _read_all(clean).values() for b in blocks])
    assert (labels >= 0).mean() > 0.8


def test_resumed_build_equals_clean_build(clean: Path, recordings: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    assert build_corpus(_cfg(recordings, out, part=0, num_parts=2)) is None  # half built, no manifest yet
    finished = sorted((out / DONE_DIR).glob("*.json"))
    stamps = {f: f.stat().st_mtime_ns for f in finished}
    (out / "shards" / "half-written-0000.tar.tmp").write_bytes(b"killed mid-write")
    assert build_corpus(_cfg(recordings, out)) == out / MANIFEST
    assert all(f.stat().st_mtime_ns == t for f, t in stamps.items()), "finished recordings were rebuilt"
    a = _comparable(json.loads((clean / MANIFEST).read_text()))
    b = _comparable(json.loads((out / MANIFEST).read_text()))
    assert [r["id"] for r in a["recordings"]] == [r["id"] for r in b["recordings"]]
    assert a == b
    ra, rb = _read_all(clean), _read_all(out)
    assert ra.keys() == rb.keys()
    for k in ra:
        for (wa, ta, la), (wb, tb, lb) in zip(ra[k], rb[k], strict=True):
            assert np.array_equal(wa, wb) and np.array_equal(ta, tb) and np.array_equal(la, lb)


def test_existing_corpus_is_not_overwritten(clean: Path, recordings: list[Path]) -> None:
    before = (clean / MANIFEST).read_bytes()
    with pytest.raises(OutputExistsError, match="overwrite=true"):
        build_corpus(_cfg(recordings, clean))
    assert (clean / MANIFEST).read_bytes() == before


def test_a_built_corpus_is_refused_before_any_synthetic_recording_is_generated(
    recordings: list[Path], tmp_path: Path
) -> None:
    """Growing a finished synthetic corpus (synthetic.n 4200 -> 5000) generated the 800 new recordings (2 min) and
    only then said the corpus exists."""
    out = tmp_path / "c"
    build_corpus(_cfg(recordings[:1], out))
    source = tmp_path / "synth"
    with pytest.raises(OutputExistsError, match="overwrite=true"):
        build_corpus(_cfg([], out, synthetic={"n": 1, "dir": str(source), "duration_s": 2.0}))
    assert not source.exists()


def test_overwrite_rebuilds(recordings: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "c"
    build_corpus(_cfg(recordings[:2], out))
    build_corpus(_cfg(recordings[2:], out, overwrite=True))
    m = json.loads((out / MANIFEST).read_text())
    assert len(m["recordings"]) == 2
    assert {r["path"] for r in m["recordings"]} == {str(p) for p in recordings[2:]}
    assert len(list((out / DONE_DIR).glob("*.json"))) == 2


def test_parallel_build_equals_serial(clean: Path, recordings: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "par"
    build_corpus(_cfg(recordings, out, workers=2))
    assert _comparable(json.loads((out / MANIFEST).read_text())) == _comparable(
        json.loads((clean / MANIFEST).read_text())
    )


def test_bad_inputs_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(DeepSpikeError, match="nothing-here"):
        build_corpus(_cfg([tmp_path / "nothing-here*.npy"], tmp_path / "o"))
    with pytest.raises(DeepSpikeError, match="workers"):
        CorpusConfig.from_cfg({"recordings": [], "out": "x", "workers": 0})
    with pytest.raises(DeepSpikeError, match="recordings"):
        build_corpus(_cfg([], tmp_path / "o"))


def test_split_is_by_recording_and_seeded() -> None:
    ids = [f"r{i}" for i in range(10)]
    a = split_recordings(ids, 0.2, seed=1)
    assert a == split_recordings(list(reversed(ids)), 0.2, seed=1)
    assert sum(v == "val" for v in a.values()) == 2
    assert split_recordings(["only"], 0.5, 0) == {"only": "train"}


def test_cli_builds_from_a_glob(recordings: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "cli"
    pattern = str(recordings[0].parent / "synth_00[01]")
    cmd = [sys.executable, "-m", "deepspike.data.corpus", f"recordings=['{pattern}']", f"out={out}", "progress=false"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    m = json.loads((out / MANIFEST).read_text())
    assert len(m["recordings"]) == 2 and m["num_spikes"] > 0
    assert "manifest:" in res.stdout


def test_cli_multirun_slices_write_one_manifest(recordings: list[Path], tmp_path: Path) -> None:
    """A sweep over `part` (what a SLURM array does) builds every slice; the last writes the manifest."""
    out = tmp_path / "parts"
    pattern = str(recordings[0].parent / "synth_00[0-2]")
    cmd = [sys.executable, "-m", "deepspike.data.corpus", "-m", f"recordings=['{pattern}']", f"out={out}"]
    res = subprocess.run([*cmd, "num_parts=2", "part=0,1", "progress=false"], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    m = json.loads((out / MANIFEST).read_text())
    assert len(m["recordings"]) == 3
    assert sorted((out / "logs").glob("*/part*")), "each slice has its own log folder"


def test_slurm_array_config_composes() -> None:
    from hydra import compose, initialize_config_dir

    from deepspike.paths import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("corpus", overrides=["hydra/launcher=slurm_cpu", "workers=4"], return_hydra_config=True)
    assert cfg.hydra.launcher.cpus_per_task == 4
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")


def test_unreadable_recording_stops_or_is_skipped(recordings: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "broken.npy"
    bad.write_bytes(b"not an npy file")
    recs = [recordings[0], bad]
    with pytest.raises(DeepSpikeError, match=r"broken\.npy.*on_error=skip"):
        build_corpus(_cfg(recs, tmp_path / "a", recording_options={"sampling_frequency": 40000.0}))
    out = tmp_path / "b"
    manifest = build_corpus(_cfg(recs, out, on_error="skip", recording_options={"sampling_frequency": 40000.0}))
    m = json.loads(Path(manifest).read_text())
    assert [r["path"] for r in m["recordings"]] == [str(recordings[0])]
    assert [s["path"] for s in m["skipped"]] == [str(bad)] and "broken.npy" in m["skipped"][0]["error"]


def test_cli_error_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "rec.xyz"
    bad.write_text("?")
    cmd = [
        sys.executable,
        "-m",
        "deepspike.data.corpus",
        f"recordings=[{bad}]",
        f"out={tmp_path / 'o'}",
        "progress=false",
    ]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert "error:" in res.stderr and "rec.xyz" in res.stderr and "Traceback" not in res.stderr


def test_resume_with_other_settings_is_refused(clean: Path, recordings: list[Path], tmp_path: Path) -> None:
    """A killed build resumed with another threshold / window must not finish under the new settings' name."""
    out = tmp_path / "corpus"
    assert build_corpus(_cfg(recordings, out, part=0, num_parts=2)) is None  # killed half-way
    for change in ({"extract": {"threshold": 8.0}}, {"window": {"n_before": 6}}, {"block_size": 128}):
        with pytest.raises(DeepSpikeError, match=r"(?s)settings.*overwrite=true") as err:
            build_corpus(_cfg(recordings, out, **change))
        key = next(iter(change))
        assert key in str(err.value) and str(out) in str(err.value)
        assert not (out / MANIFEST).exists()
    assert build_corpus(_cfg(recordings, out)) == out / MANIFEST  # the same settings resume
    m = json.loads((out / MANIFEST).read_text())
    assert m["num_spikes"] == json.loads((clean / MANIFEST).read_text())["num_spikes"]


def test_truncated_shard_is_rebuilt_on_resume(clean: Path, recordings: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    assert build_corpus(_cfg(recordings, out, part=0, num_parts=2)) is None
    record = json.loads(sorted((out / DONE_DIR).glob("*.json"))[0].read_text())
    shard = out / record["shards"][0]["path"]
    good = shard.read_bytes()
    assert record["shards"][0]["size"] == len(good) and len(record["shards"][0]["sha256"]) == 64
    shard.write_bytes(good[: len(good) // 2])  # a truncated shard
    assert build_corpus(_cfg(recordings, out)) == out / MANIFEST
    assert shard.read_bytes() == good  # rebuilt, identical to the first build
    m = json.loads((out / MANIFEST).read_text())
    assert all(s["size"] == (out / s["path"]).stat().st_size and len(s["sha256"]) == 64 for s in m["shards"])
    assert _read_all(out).keys() == _read_all(clean).keys()


def _children(pid: int) -> set[int]:
    """Every descendant of ``pid`` (from /proc: psutil may not be installed)."""
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            parents[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out.update(kids)
        todo.extend(kids)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has ended (only its exit status is left)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_killed_parallel_build_leaves_no_workers(tmp_path: Path, sig: str) -> None:
    """A killed ``deepspike-corpus workers=2`` (SIGTERM: handled; SIGKILL: workers watch their parent) leaves no
    worker process behind, within seconds."""
    import signal
    import time

    from deepspike.recording.synthetic import write_synthetic_recordings

    recs = list(write_synthetic_recordings(tmp_path / "rec", 6, seed=5, duration_s=40.0))
    cmd = [sys.executable, "-m", "deepspike.data.corpus", f"recordings=[{','.join(map(str, recs))}]",
           f"out={tmp_path / 'out'}", "workers=2", "progress=false"]  # fmt: skip
    log = (tmp_path / "log.txt").open("w")  # not a pipe: orphaned workers would hold it open
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True)
    kids: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while len(_children(proc.pid)) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)  # the workers are importing or building recordings (the whole build takes ~5 s idle)
        kids = _children(proc.pid)
        assert proc.poll() is None and len(kids) >= 2, "the build ended before it could be killed"
        proc.send_signal(getattr(signal, sig))
        proc.wait(timeout=30)
        # SIGTERM: the parent terminates its pool at once. SIGKILL: each worker notices its parent is gone within
        # 0.5 s once its watcher runs, which is only after the spawned worker has imported the package (seconds,
        # up to ~20 s under load while the corpus imported torch, which it no longer does); before the fix they
        # never ended.
        wait_s = 10 if sig == "SIGTERM" else 60
        deadline = time.monotonic() + wait_s
        while any(_alive(k) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [k for k in kids if _alive(k)]
        assert not left, f"worker processes still running {wait_s} s after the parent was killed: {left}"
        out = (tmp_path / "log.txt").read_text()
        assert proc.returncode != 0 and "Traceback" not in out, out[-2000:]
        if sig == "SIGTERM":
            assert "stopped by SIGTERM" in out and "resume" in out, out[-2000:]
    finally:
        proc.kill()
        for k in kids:
            if _alive(k):
                os.kill(k, signal.SIGKILL)
        log.close()
