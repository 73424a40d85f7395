"""The package's shape: stages import each other in one direction (no cycle, imports inside functions count)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "deepspike"


def _imports(path: Path) -> set[str]:
    """Every ``deepspike.<module>`` this file imports, at any depth (top level or inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("deepspike"):
            parts = node.module.split(".")
            if len(parts) > 1:
                found.add(parts[1])
            else:  # from deepspike import x: x may be a module or __version__
                found |= {a.name for a in node.names if (PKG / f"{a.name}.py").exists()}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("deepspike.")}
    return found


def import_graph() -> dict[str, set[str]]:
    return {p.stem: _imports(p) - {p.stem} for p in PKG.glob("*.py") if p.stem != "__init__"}


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
    assert find_cycle(import_graph()) is None, f"import cycle: {' -> '.join(find_cycle(import_graph()))}"


@pytest.mark.parametrize(
    ("name", "home"),
    [("matched_accuracy", "evaluate"), ("gmm_scores", "evaluate"), ("CollapseMetric", "evaluate"),
     ("freeze_encoder", "models"), ("load_parent", "export"), ("build_finetune_corpus", "corpus"),
     ("fit_gmm", "cluster"), ("autoencoder_loss", "objective")],
)  # fmt: skip
def test_one_home_per_concept(name: str, home: str) -> None:
    """Each concept is defined in exactly one module, the one of its stage."""
    homes = [p.stem for p in PKG.glob("*.py") if f"def {name}(" in p.read_text() or f"class {name}" in p.read_text()]
    assert homes == [home]


def test_one_gmm_construction_and_one_hungarian() -> None:
    """GaussianMixture is configured only in cluster.py and linear_sum_assignment is called only in evaluate.py."""
    root = PKG.parent
    files = [*PKG.glob("*.py"), *(root / "bench").glob("*.py")]
    gmm = sorted(p.name for p in files if "GaussianMixture(" in p.read_text().replace("BayesianGaussianMixture(", ""))
    hungarian = sorted(p.name for p in files if "linear_sum_assignment(" in p.read_text())
    assert gmm == ["cluster.py"]
    assert hungarian == ["evaluate.py"]


def _module_table() -> list[tuple[list[str], str]]:
    """(modules, API text) per row of docs/ARCHITECTURE.md's module table."""
    import re

    doc = (PKG.parent / "docs" / "ARCHITECTURE.md").read_text()
    rows = []
    for line in doc.splitlines():
        m = re.match(r"\| ((?:`\w+`(?:, )?)+) \| (.*) \|$", line)
        if m:
            rows.append((re.findall(r"`(\w+)`", m.group(1)), m.group(2)))
    return rows


def test_docs_module_table_matches_the_code() -> None:
    """Every module is in the table, every module named there exists, and each callable it names is defined there."""
    import importlib
    import re

    rows = _module_table()
    named = {m for mods, _ in rows for m in mods}
    modules = {p.stem for p in PKG.glob("*.py") if p.stem != "__init__"}
    assert named == modules, f"missing from the table: {modules - named}; no such module: {named - modules}"
    for mods, api in rows:
        loaded = [importlib.import_module(f"deepspike.{m}") for m in mods]
        for name in re.findall(r"`(\w+)\(", api):
            assert any(hasattr(mod, name) for mod in loaded), f"docs name {name}() in {mods}, which do not define it"


def test_corpus_builder_does_not_import_torch() -> None:
    """Corpus workers are spawned processes: importing torch there costs seconds each (and delayed their watcher
    of a killed parent by up to ~20 s under load), and building shards needs none of it."""
    import subprocess
    import sys

    code = "import sys, deepspike.corpus; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PKG.parent)
    assert out.stdout.strip() == "False"
