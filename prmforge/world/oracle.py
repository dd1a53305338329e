"""The step oracle: ground truth for where a candidate world solution first goes wrong.

It is the yardstick for labellers and PRMs, never a labeller itself.

Rule (value based). The oracle walks the steps keeping the *current value*
(the start quantity, then the result of the last accepted equation) and the
set of events not yet applied. In each step it reads every equation
``a op b = c`` (``op`` one of ``+ - x * × / ÷``) and, in order:

1. A step with no equation and no final-answer claim is a ``format`` error.
2. The equation must apply an unused event to the current value: ``a`` is the
   current value and ``b`` the event's number with the event's operation
   (``+`` and ``x`` also accept the operands swapped). Anything else is a
   ``logic`` error, with a detail: ``distractor used``, ``wrong operation``
   (right numbers, other op), ``wrong operand`` or ``wrong current value``.
3. Events may be applied out of the problem's order only when every event
   skipped over is of the same class (``+``/``-`` together, ``x``/``/``
   together), since those reorders give the same final value; skipping an
   event of the other class is a ``logic`` error (``step skipped``), as is a
   reorder that makes a division inexact.
4. A well-formed, logically valid equation whose result ``c`` is not
   ``a op b`` is an ``arithmetic`` error.
5. A final-answer claim (``The answer is X``, ``####``, ``\\boxed{}``,
   ``Answer:``) before every event is applied, or stating a value other than
   the current value, is a ``logic`` error; so is an equation after all
   events are applied.
6. A solution that ends with events unapplied fails at its last step
   (``logic``, ``stopped early``); an empty solution fails at 0 (``format``).

Only the first error matters, so the walk stops there.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from prmforge.world.format import extract_answer
from prmforge.world.generator import WorldProblem, apply_op

_NUM = r"(-?\d[\d,]*(?:\.\d+)?)"
_EQ = re.compile(_NUM + r"\s*([+\-x*×/÷])\s*" + _NUM + r"\s*=\s*" + _NUM)
_OPS = {"+": "+", "-": "-", "x": "x", "*": "x", "×": "x", "/": "/", "÷": "/"}
_CLASS = {"+": "add", "-": "add", "x": "mul", "/": "mul"}


@dataclass(frozen=True)
class OracleVerdict:
    """First wrong step (-1 if none), its error kind and a human-readable reason."""

    first_error: int
    kind: str | None  # "arithmetic" | "logic" | "format" | None
    detail: str | None = None

    @property
    def correct(self) -> bool:
        return self.first_error == -1


def _meta_of(problem: WorldProblem | dict[str, Any] | str) -> dict[str, Any]:
    """Accept a problem, its meta dict, a seed row with a ``meta`` field, or meta JSON."""
    if isinstance(problem, WorldProblem):
        return problem.meta
    if isinstance(problem, str):
        problem = json.loads(problem)
    if isinstance(problem, dict) and "ops" not in problem and "meta" in problem:
        inner = problem["meta"]
        return json.loads(inner) if isinstance(inner, str) else inner
    if isinstance(problem, dict) and "ops" in problem and "start" in problem:
        return problem
    raise ValueError("oracle needs a WorldProblem or its meta (with 'start' and 'ops')")


def _num(text: str) -> float:
    v = float(text.replace(",", ""))
    return int(v) if v.is_integer() else v


def oracle_first_error(problem: WorldProblem | dict[str, Any] | str, steps: list[str]) -> OracleVerdict:
    """Judge ``steps`` against the world problem (see the module docstring for the rule)."""
    meta = _meta_of(problem)
    ops = [(str(op), int(n)) for op, n in meta["ops"]]
    distractors = {int(v) for v, _ in meta.get("distractors", [])}
    cur: int = int(meta["start"])
    unused = list(range(len(ops)))
    if not steps:
        return OracleVerdict(0, "format", "empty solution")
    for k, step in enumerate(steps):
        equations = list(_EQ.finditer(step))
        claim = extract_answer(step)
        if not equations and claim is None:
            return OracleVerdict(k, "format", "no equation in step")
        for m in equations:
            a, op, b, c = _num(m.group(1)), _OPS[m.group(2)], _num(m.group(3)), _num(m.group(4))
            verdict = _judge_equation(cur, unused, ops, distractors, a, op, b)
            if isinstance(verdict, str):
                return OracleVerdict(k, "logic", verdict)
            j, expected = verdict
            if c != expected:
                return OracleVerdict(k, "arithmetic", f"{m.group(0)} should give {expected}")
            cur = expected
            unused.remove(j)
        if claim is not None:
            if unused:
                return OracleVerdict(k, "logic", f"answer claimed with {len(unused)} event(s) unapplied")
            if _num(claim) != cur:
                return OracleVerdict(k, "logic", f"claimed answer {claim} but the result is {cur}")
    if unused:
        return OracleVerdict(len(steps) - 1, "logic", f"stopped early: {len(unused)} event(s) unapplied")
    return OracleVerdict(-1, None, None)


def _judge_equation(
    cur: int, unused: list[int], ops: list[tuple[str, int]], distractors: set[int], a: float, op: str, b: float
) -> tuple[int, int] | str:
    """``(event index, correct result)`` if the equation is a valid move, else the logic-error detail."""
    if not unused:
        return "equation after every event was applied"
    commutative = op in ("+", "x")
    matches = [j for j in unused if ops[j][0] == op and
               ((a == cur and b == ops[j][1]) or (commutative and b == cur and a == ops[j][1]))]
    for j in matches:
        skipped = [i for i in unused if i < j]
        if all(_CLASS[ops[i][0]] == _CLASS[op] for i in skipped):
            result = apply_op(cur, op, ops[j][1])
            if result is None:
                return "reordered so that a division is not exact"
            return j, result
    if matches:
        return "step skipped"
    operands = {a, b}
    if operands & distractors and cur in operands:
        return "distractor used"
    if cur in operands and any((operands - {cur}) == {ops[j][1]} or (a == b == ops[j][1] == cur)
                               for j in unused):
        return "wrong operation"
    if cur not in operands:
        if operands & distractors:
            return "distractor used"
        return "wrong current value"
    return "wrong operand"
