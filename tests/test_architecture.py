"""Layering rules, checked on the source with ``ast`` (no imports executed).

* ``prmforge/`` is plain Python: it imports nothing from dagster, pipelines,
  assets or resources, at module level or inside functions.
* No source, test or benchmark imports Dagster's private modules (``dagster._...``).
* The modules of ``prmforge`` import each other without cycles.
* Only ``prmforge/env.py`` reads or sets environment variables.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("prmforge", "pipelines", "assets", "resources")
SOURCES = [*PACKAGES, "benchmarks", "tests"]
FORBIDDEN_IN_CORE = ("dagster", "pipelines", "assets", "resources")


def _files(*roots: str) -> list[Path]:
    return sorted(p for r in roots for p in (REPO / r).rglob("*.py"))


def _module(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every imported module name in ``path`` (absolute and resolved relative imports), with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.append((node.lineno, base))
            # ``from prmforge import env``: the submodule counts as imported
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return out


def test_core_imports_no_orchestration() -> None:
    bad = [f"{p.relative_to(REPO)}:{line} imports {name}"
           for p in _files("prmforge") for line, name in _imports(p)
           if name.split(".")[0] in FORBIDDEN_IN_CORE]
    assert not bad, "prmforge/ must stay plain Python:\n" + "\n".join(bad)


def test_no_private_dagster_imports() -> None:
    bad = [f"{p.relative_to(REPO)}:{line} imports {name}"
           for p in _files(*SOURCES) for line, name in _imports(p)
           if name.startswith("dagster._") or ".dagster._" in name or name.startswith(("dagster_graphql._",))]
    text_hits = [str(p.relative_to(REPO)) for p in _files(*SOURCES)
                 if p != Path(__file__).resolve() and "dagster._" in p.read_text(encoding="utf-8")]
    assert not bad and not text_hits, "private Dagster API used:\n" + "\n".join(bad + text_hits)


def test_no_import_cycles_in_prmforge() -> None:
    modules = {_module(p): p for p in _files("prmforge")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        for _, name in _imports(path):
            # the longest prmforge module that ``name`` is or is inside
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != mod and not mod.startswith(name + "."):  # a package's own __init__ is not a cycle
                graph[mod].add(name)
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append([*stack[stack.index(n):], n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_only_env_reads_the_environment() -> None:
    bad = []
    for p in _files(*PACKAGES):
        if p == REPO / "prmforge" / "env.py":
            continue
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv", "unsetenv") \
                    and isinstance(node.value, ast.Name) and node.value.id == "os":
                bad.append(f"{p.relative_to(REPO)}:{node.lineno} os.{node.attr}")
    assert not bad, "read the environment through prmforge.env:\n" + "\n".join(bad)
