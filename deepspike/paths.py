"""Where the repository's own folders are (configs, demo data, bundled checkpoints).

DeepSpike is installed editable (`make install`), so `conf/`, `data/` and `checkpoints/` stay at the
repository root beside the package; every module finds them here, in one place.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"
DATA_DIR = REPO_ROOT / "data"
CHECKPOINT_DIR = REPO_ROOT / "checkpoints"
