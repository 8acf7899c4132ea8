"""The import rules of docs/architecture.md, read from the source with `ast`: no import cycle
(lazy imports inside functions count too), plumbing imports no step, steps import neither the
pipeline nor the CLI, the synthetic fixtures stand apart."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PLUMBING = {"curation.config", "curation.manifest", "curation.images", "curation.parallel",
            "curation.lifecycle", "curation.safety", "curation.errors", "curation.vocabulary",
            "curation.settings", "curation.steps", "curation.figures", "curation.sheets",
            "curation.environment", "curation.leaks"}
STEP_PACKAGES = ("curation.scan", "curation.dedupe", "curation.noise", "curation.embed",
                 "curation.review", "curation.split", "curation.report", "curation.demo",
                 "training")
# what puts the steps together (the demo runs the whole pipeline)
ASSEMBLY = {"curation.registry", "curation.pipeline", "curation.cli_options",
            "curation.model_cli", "cli", "curation.demo.step"}
# the generated dataset with planted problems (tests and `curate demo`)
FIXTURES = {"curation.demo.synthetic", "curation.demo.drawing"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported(path: Path, known: set[str]) -> set[str]:
    """The project modules path imports anywhere in it (not under `if TYPE_CHECKING:`)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    skipped = {id(n) for block in ast.walk(tree) if _is_type_checking(block)
               for n in ast.walk(block) if n is not block}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                       for alias in node.names]
        else:
            continue
        if id(node) in skipped:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = [*REPO.glob("curation/**/*.py"), *REPO.glob("training/**/*.py"), REPO / "cli.py"]
    known = {module_name(p) for p in files}
    return {module_name(p): imported(p, known) for p in files}


def _in(module: str, packages) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_there_is_no_import_cycle(graph):
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*trail[trail.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert not cycles, cycles


def test_plumbing_imports_no_step_pipeline_or_cli(graph):
    bad = {m: sorted(d for d in graph[m] if _in(d, STEP_PACKAGES) or d in ASSEMBLY)
           for m in PLUMBING if m in graph}
    assert not {m: d for m, d in bad.items() if d}, bad


def test_steps_import_neither_the_pipeline_nor_the_cli(graph):
    bad = {m: sorted(deps & {"curation.pipeline", "curation.cli_options", "cli"})
           for m, deps in graph.items() if _in(m, STEP_PACKAGES) and m not in ASSEMBLY}
    assert not {m: d for m, d in bad.items() if d}, bad


def test_fixtures_import_plumbing_only_and_only_the_demo_uses_them(graph):
    outward = {m: sorted(graph[m] - PLUMBING - FIXTURES) for m in FIXTURES}
    users = sorted(m for m, deps in graph.items()
                   if deps & FIXTURES and m not in FIXTURES and m != "curation.demo.step")
    assert not any(outward.values()) and not users, (outward, users)


def test_the_rules_see_real_edges(graph):
    """The checker reads imports as they are: known edges, including relative and lazy ones."""
    assert "curation.registry" in graph["curation.pipeline"]
    assert "training.data" in graph["training.train"]                  # `from .data import`
    assert "curation.split.materialize" in graph["curation.split.step"]  # inside a function
    assert all(m in graph for m in PLUMBING | FIXTURES)
    assert "curation.demo.synthetic" in graph["curation.demo.step"]
