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


def write_json_atomic(path: Path, obj: Any, default: Any = None) -> None:
    """Write ``obj`` as JSON under a temporary name, then rename: a reader never sees half a file.

    ``default`` converts what JSON cannot hold (``str`` for free-form run records); None refuses it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=default))
    os.replace(tmp, path)
