"""Where the repository's own folders are (configs, demo data, bundled checkpoints).

DeepSpike is installed editable (`make install`), so `conf/`, `data/` and `checkpoints/` stay at the
repository root beside the package; every module finds them here, in one place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"
DATA_DIR = REPO_ROOT / "data"
CHECKPOINT_DIR = REPO_ROOT / "checkpoints"


def resolve_repo_path(path: str | os.PathLike, key: str, fix: str) -> Path:
    """The file or folder ``path`` names: as given (relative: from the current directory), else relative to the
    repository, else inside ``checkpoints/``, so ``checkpoints/x.safetensors`` and a bare ``x.safetensors`` work from
    any directory. The error names ``key`` (the option), every path tried (the file may exist, only elsewhere) and
    ``fix``."""
    given = Path(path).expanduser()
    tried = [given]
    if not given.is_absolute():
        tried = [Path.cwd() / given, REPO_ROOT / given]
        if given.parts[:1] != (CHECKPOINT_DIR.name,):  # not checkpoints/checkpoints/...
            tried.append(CHECKPOINT_DIR / given)
    tried = list(dict.fromkeys(tried))  # the current directory may be the repository
    for p in tried:
        if p.exists():
            return p
    from deepspike.errors import DeepSpikeError

    raise DeepSpikeError(f"{key}={str(path)!r} not found; tried {', '.join(map(str, tried))}. {fix}")


def write_json_atomic(path: Path, obj: Any, default: Any = None) -> None:
    """Write ``obj`` as JSON under a temporary name, then rename: a reader never sees half a file.

    ``default`` converts what JSON cannot hold (``str`` for free-form run records); None refuses it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=default))
    os.replace(tmp, path)
