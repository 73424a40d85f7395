"""Every user-facing default is declared once, in conf/: the real configs, composed by Hydra, build dataclasses
equal to the dataclass defaults, every field has a YAML key and every key a field, and library functions take
None (the declared default) rather than literals of their own. Any drift between the two fails here."""

from __future__ import annotations

import inspect
from dataclasses import fields
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from deepspike.data.corpus import CorpusConfig
from deepspike.errors import DeepSpikeError
from deepspike.model import pretext
from deepspike.paths import CONF_DIR
from deepspike.recording import preprocess
from deepspike.sorting.clustering import cluster
from deepspike.sorting.clustering.params import METHODS, ClusterParams
from deepspike.spikes import detect, windows
from deepspike.spikes.extract import ExtractParams


def _compose(name: str, overrides: list[str] | None = None) -> Any:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(name, overrides=overrides or [])


def _plain(node: Any) -> dict[str, Any]:
    return OmegaConf.to_container(node, resolve=True)


def _names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


@pytest.mark.parametrize("method", METHODS)
def test_sort_config_builds_the_default_cluster_params(method: str) -> None:
    cfg = _compose("sort", [f"cluster={method}"])
    options = _plain(cfg.cluster)
    assert options["method"] == method
    assert ClusterParams.from_dict({"seed": cfg.seed, **options}) == ClusterParams(method=method)


def test_every_cluster_field_is_a_config_key_and_back() -> None:
    keys: set[str] = set()
    for method in METHODS:
        keys |= set(_compose("sort", [f"cluster={method}"]).cluster)
    assert keys == _names(ClusterParams) - {"seed"}  # seed is the run's top-level `seed`
    assert "seed" in _compose("sort")


@pytest.mark.parametrize("app", ["sort", "corpus"])
def test_extract_config_builds_the_default_extract_params(app: str) -> None:
    cfg = _compose(app)
    assert set(cfg.extract) == _names(ExtractParams)
    assert ExtractParams.from_config(cfg.extract) == ExtractParams()


def test_corpus_config_builds_the_default_corpus_config() -> None:
    cfg = _compose("corpus")
    assert set(cfg) == _names(CorpusConfig)
    assert CorpusConfig.from_cfg(cfg) == CorpusConfig()


@pytest.mark.parametrize("model", sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml")))
def test_train_config_pretext_matches_the_transforms(model: str) -> None:
    """Each model config's pretext node names every transform, with exactly the options its function takes, and
    instantiates to the same Pretext as the library's defaults for those tasks."""
    cfg = _compose("train", [f"model={model}", "logger=none"])
    node = cfg.model.pretext
    assert set(node.params) == set(pretext.TRANSFORMS)
    for task, options in node.params.items():
        takes = inspect.signature(pretext.TRANSFORMS[task]).parameters
        assert set(options) == {n for n, p in takes.items() if p.kind is p.KEYWORD_ONLY}, task
        assert all(p.default is p.empty for n, p in takes.items() if p.kind is p.KEYWORD_ONLY), task
    built = instantiate(node)
    assert built.tasks == list(node.tasks) == pretext.Pretext().tasks
    assert built.params == pretext.Pretext(tasks=list(node.tasks)).params


@pytest.mark.parametrize(
    ("func", "names"),
    [
        (preprocess.bandpass, ("freq_min", "freq_max", "filtered")),
        (detect.detect_peaks, ("threshold", "polarity", "dead_time_ms", "chunk_duration_s", "n_jobs")),
        (detect.plan_detection, ("threshold", "polarity", "dead_time_ms", "chunk_duration_s", "n_jobs")),
        (windows.extract_windows, ("chunk_duration_s",)),
        (cluster.merge_similar_units, ("similarity", "amplitude_ratio", "max_dprime")),
        (cluster.merge_unimodal_units, ("max_ratio", "seed")),
    ],
)
def test_library_functions_default_to_the_config(func: Any, names: tuple[str, ...]) -> None:
    """A configured parameter defaults to None (= the declared default), never to a literal that can drift."""
    params = inspect.signature(func).parameters
    assert {n: params[n].default for n in names} == dict.fromkeys(names)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: ClusterParams.from_dict({"max_units": 0}), r"cluster\.max_units"),
        (lambda: ClusterParams.from_dict({"merge_max_dprime": -1.0}), r"cluster\.merge_max_dprime"),
        (lambda: ExtractParams.from_config({"threshold": -1}), r"extract\.threshold"),
        (lambda: pretext.Pretext(["noise"], params={"noise": {"sd": 1.0}}), r"model\.pretext\.params\.noise.*sigma"),
        (lambda: pretext.Pretext(["blur"]), r"model\.pretext\.tasks"),
        (lambda: CorpusConfig.from_cfg({"workers": 0}), r"workers.*conf/corpus\.yaml"),
    ],
)
def test_bad_values_name_their_config_key(build: Any, match: str) -> None:
    with pytest.raises(DeepSpikeError, match=match):
        build()


def test_sort_config_builds_the_default_sort_config() -> None:
    """conf/sort.yaml as composed builds SortConfig() exactly; every key is a field of SortConfig/SortParams."""
    from deepspike.model.finetune import FinetuneParams
    from deepspike.sorting.app import SortConfig
    from deepspike.sorting.params import SortParams

    cfg = _compose("sort")
    assert SortConfig.from_cfg(cfg) == SortConfig()
    top = set(_plain(cfg)) - {"cluster", "extract"}  # groups with their own dataclasses, checked above
    assert top == (_names(SortConfig) - {"params"}) | (_names(SortParams) - {"cluster", "extract"})
    assert set(_plain(cfg.finetune_options)) == _names(FinetuneParams)
