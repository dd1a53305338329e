"""Asset bodies stay short: each reads like its stage's table of contents.

Why: an asset body should only read settings and resources, call one core
function of ``prmforge/`` (where the logic runs and is tested without
Dagster) and report the result as metadata, MLflow figures and checks.
Checked on the source with ``ast``; tests/test_architecture.py holds the
import rules.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_ASSET_BODY_LINES = 45
ASSET_DECORATORS = {"asset", "multi_asset", "graph_asset", "graph_multi_asset"}


def _decorator_name(node: ast.expr) -> str:
    target = node.func if isinstance(node, ast.Call) else node
    return target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")


def _asset_bodies() -> dict[str, int]:
    """``module:function`` -> lines of the body (docstring excluded) of every asset function in assets/."""
    out: dict[str, int] = {}
    for path in sorted((ROOT / "assets").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.FunctionDef):
                continue
            if not any(_decorator_name(d) in ASSET_DECORATORS for d in node.decorator_list):
                continue
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]
            out[f"{path.stem}:{node.name}"] = (body[-1].end_lineno or 0) - body[0].lineno + 1 if body else 0
    return out


def test_asset_bodies_are_short() -> None:
    bodies = _asset_bodies()
    assert len(bodies) >= 10  # the walk found the assets (seed, policy, rollouts, labels, prm)
    long = {name: n for name, n in bodies.items() if n > MAX_ASSET_BODY_LINES}
    assert not long, f"asset bodies over {MAX_ASSET_BODY_LINES} lines (move the logic into prmforge/): {long}"

