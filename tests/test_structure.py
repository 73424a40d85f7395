"""The package's shape (docs/ARCHITECTURE.md): one subpackage per stage, stages import each other in one direction
(no cycle, imports inside functions count), every module in its stage's folder, each concept in one home."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "deepspike"
ROOT_MODULES = {"errors", "spec", "defaults", "paths", "provenance", "cli", "demo"}
STAGES = ("recording", "spikes", "data", "model", "sorting", "evaluation")
MAX_LINES = 600  # a longer module says why in its docstring ("Over 600 lines: ...")

# Who may import whom: a module imports only modules of its own rank or lower. The clustering library is pure
# numpy/scikit-learn and sits below the model, whose validation metric fits the same mixtures; the sorter uses the
# model's artifacts; the benchmark runs the sorter; the entry points import everything.
RANKS = [
    ("errors spec defaults paths provenance", 0),
    ("recording", 1),
    ("spikes", 2),
    ("data", 3),
    ("evaluation.compare", 3),
    ("sorting.clustering", 4),
    ("model", 5),
    ("sorting", 6),
    ("evaluation", 7),
    ("cli demo", 8),
]


def modules() -> dict[str, Path]:
    """Dotted module name (without ``deepspike.``) -> file; a package is its ``__init__``."""
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _imports(path: Path, known: set[str]) -> set[str]:
    """Every deepspike module this file imports, at any depth (top level or inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "deepspike":
            base = node.module.removeprefix("deepspike").lstrip(".")
            for a in node.names:
                sub = f"{base}.{a.name}".strip(".")
                found.add(sub if sub in known else base)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("deepspike.") for a in node.names if a.name.startswith("deepspike.")}
    return found - {""}


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: _imports(p, known) - {m} for m, p in mods.items() if m}


def rank(module: str) -> int:
    """The rank of the most specific RANKS entry that covers ``module``."""
    best, depth = None, -1
    for names, r in RANKS:
        for prefix in names.split():
            if (module == prefix or module.startswith(prefix + ".")) and prefix.count(".") > depth:
                best, depth = r, prefix.count(".")
    assert best is not None, f"deepspike.{module} is in no stage of RANKS (tests/test_structure.py)"
    return best


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle as a path of module names, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return [*stack[stack.index(m) :], m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_cycle_finder_finds_a_planted_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_package() -> None:
    graph = import_graph()
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_stages_import_only_downward() -> None:
    """No module imports a later stage (RANKS): the data flow of docs/ARCHITECTURE.md, in code."""
    bad = [f"{m} -> {d}" for m, deps in import_graph().items() for d in deps if d and rank(d) > rank(m)]
    assert not bad, f"imports against the stage order: {bad}"


def test_every_module_lives_in_a_stage_folder() -> None:
    """A newcomer finds a stage's code by its folder: only the small root sits beside the subpackages."""
    root = {p.stem for p in PKG.glob("*.py")} - {"__init__"}
    assert root == ROOT_MODULES
    assert {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == set(STAGES)


@pytest.mark.parametrize("package", [*STAGES, "sorting.clustering"])
def test_each_subpackage_says_what_its_stage_does(package: str) -> None:
    """Each ``__init__.py`` is a docstring naming its modules, and nothing else (importing a stage costs nothing)."""
    init = PKG / package.replace(".", "/") / "__init__.py"
    tree = ast.parse(init.read_text())
    doc = ast.get_docstring(tree)
    assert doc and len(tree.body) == 1, f"{init}: a docstring only"
    own = {p.stem for p in init.parent.glob("*.py")} - {"__init__"}
    unnamed = sorted(m for m in own if f"``{m}``" not in doc and f"``{m}/``" not in doc)
    assert not unnamed, f"{init}'s docstring does not name {unnamed}"


def test_no_module_over_the_size_limit_without_a_reason() -> None:
    long = []
    for p in PKG.rglob("*.py"):
        n = len(p.read_text().splitlines())
        doc = ast.get_docstring(ast.parse(p.read_text())) or ""
        if n > MAX_LINES and f"Over {MAX_LINES} lines:" not in doc:
            long.append(f"{p.relative_to(PKG)} ({n})")
    assert not long, f"modules over {MAX_LINES} lines without 'Over {MAX_LINES} lines: <why>' in the docstring: {long}"


def _homes(name: str) -> list[str]:
    pattern = re.compile(rf"^(?:def {name}\(|class {name}\b)", re.M)
    return sorted(m for m, p in modules().items() if pattern.search(p.read_text()))


@pytest.mark.parametrize(
    ("name", "home"),
    [("matched_accuracy", "evaluation.compare"), ("gmm_scores", "model.collapse"),
     ("CollapseMetric", "model.collapse"), ("freeze_encoder", "model.nets"), ("load_parent", "model.lineage"),
     ("build_finetune_corpus", "data.finetune_corpus"), ("fit_gmm", "sorting.clustering.mixture"),
     ("autoencoder_loss", "model.objective"), ("git_commit", "provenance"), ("write_outputs", "sorting.outputs"),
     ("main", None)],
)  # fmt: skip
def test_one_home_per_concept(name: str, home: str | None) -> None:
    """Each concept is defined in exactly one module, the one of its stage (``main``: each app's own, one per app)."""
    if home is None:
        assert _homes(name) == ["data.corpus", "demo", "evaluation.bench", "model.train", "sorting.app"]
    else:
        assert _homes(name) == [home]


def test_one_name_per_function() -> None:
    """Two different public functions never share a name (there were two ``unit_templates``)."""
    seen: dict[str, list[str]] = {}
    for m, p in modules().items():
        for node in ast.parse(p.read_text()).body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                seen.setdefault(node.name, []).append(m)
    allowed = {"main", "propose"}  # one per app / one per clustering method: the registries' contracts
    twice = {n: ms for n, ms in seen.items() if len(ms) > 1 and n not in allowed}
    assert not twice, f"public functions defined in more than one module: {twice}"


def test_one_gmm_construction_and_one_hungarian() -> None:
    """GaussianMixture is configured only in clustering/mixture.py and linear_sum_assignment is called only in
    evaluation/compare.py."""
    files = [*PKG.rglob("*.py"), *(PKG.parent / "bench").glob("*.py")]
    gmm = sorted(p.name for p in files if "GaussianMixture(" in p.read_text().replace("BayesianGaussianMixture(", ""))
    hungarian = sorted(p.name for p in files if "linear_sum_assignment(" in p.read_text())
    assert gmm == ["mixture.py"]
    assert hungarian == ["compare.py"]


def test_clustering_methods_come_from_the_registry() -> None:
    """Each method is a config plus a module with ``propose``; the driver never names a method (no if-chain)."""
    from deepspike.sorting.clustering.methods import method
    from deepspike.sorting.clustering.params import METHODS

    assert set(METHODS) == {"gmm", "dpgmm", "hdbscan", "kmeans"}
    assert all(callable(method(m)) for m in METHODS)
    driver = (PKG / "sorting" / "clustering" / "cluster.py").read_text()
    assert not re.search(r"method == ['\"]", driver)
    with pytest.raises(KeyError, match="known"):
        method("os")


def _architecture_rows() -> list[tuple[str, list[str], str]]:
    """(package, modules, text) per row of docs/ARCHITECTURE.md's package table."""
    doc = (PKG.parent / "docs" / "ARCHITECTURE.md").read_text()
    rows = []
    for line in doc.splitlines():
        m = re.match(r"\| `(\(root\)|[\w.]+/?)` \| ((?:`\w+`(?:, )?)+) \| (.*) \|$", line)
        if m:
            rows.append((m.group(1).rstrip("/"), re.findall(r"`(\w+)`", m.group(2)), m.group(3)))
    return rows


def test_architecture_table_matches_the_code() -> None:
    """One row per subpackage (and the root); each lists exactly its modules; each callable it names exists there."""
    import importlib

    rows = _architecture_rows()
    assert {r[0] for r in rows} == {"(root)", *STAGES, "sorting.clustering"}
    for package, mods, text in rows:
        folder = PKG if package == "(root)" else PKG / package.replace(".", "/")
        assert set(mods) == {p.stem for p in folder.glob("*.py")} - {"__init__"}, f"{package}: modules differ"
        prefix = "deepspike" if package == "(root)" else f"deepspike.{package}"
        loaded = [importlib.import_module(f"{prefix}.{m}") for m in mods]
        for name in re.findall(r"`(\w+)\(", text):
            assert any(hasattr(mod, name) for mod in loaded), f"docs name {name}() in {package}, not defined there"


def _imports_torch_after(code: str) -> bool:
    out = subprocess.run([sys.executable, "-c", code + "; print('torch' in sys.modules)"], capture_output=True,
                         text=True, check=True, cwd=PKG.parent)  # fmt: skip
    return out.stdout.strip() == "True"


def test_corpus_builder_does_not_import_torch() -> None:
    """Corpus workers are spawned processes: importing torch there costs seconds each (and delayed their watcher
    of a killed parent by up to ~20 s under load), and building shards needs none of it."""
    assert not _imports_torch_after("import sys, deepspike.data.corpus")


def test_sort_path_does_not_import_torch() -> None:
    """``sort.py`` on a CPU runs the encoder in numpy: importing the sorter, its app and its stages costs no torch."""
    assert not _imports_torch_after(
        "import sys, deepspike, deepspike.sorting.app, deepspike.sorting.pipeline, deepspike.evaluation.compare; "
        "deepspike.sort, deepspike.sort_snippets, deepspike.open_recording, deepspike.compare_labels"
    )
