"""Format adapters: one raw record (a dict) → problem text, raw answer, meta.

Adapters only *extract*; :mod:`prmforge.ingest.core` validates and
normalises. They raise :class:`RecordError` with a quarantine reason for a
record they cannot read, never a bare exception.

* ``gsm8k``: ``question`` + ``answer`` whose last line is ``#### <final>``;
  the worked solution (with its ``<<a*b=c>>`` calculator annotations) goes to
  meta.
* ``math``: ``problem`` + an ``answer`` column, else the last ``\\boxed{...}``
  (nested braces handled) of ``solution``.
* ``generic``: a column mapping ``{problem: col, answer: col, split: col, id: col}``.
* ``world``: records of the built-in world (``problem``, ``answer``, ``meta``
  with the world's rebuildable meta, as a dict or a JSON string); meta is kept
  as is so later stages can rebuild the problem and run the step oracle.
* ``auto``: picks one of the above from the record's keys.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

GSM8K_MARKER = "####"
_CALC = re.compile(r"<<([^<>]*)>>")


class RecordError(ValueError):
    """A record that goes to quarantine; ``reason`` is the quarantine reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Extracted:
    """What an adapter found in one record, before validation."""

    problem: Any
    answer: Any
    split: Any = None
    meta: dict[str, Any] = field(default_factory=dict)


def _get(record: dict[str, Any], column: str, what: str) -> Any:
    if column not in record:
        raise RecordError(f"missing_{what}", f"no column {column!r} (columns: {sorted(record)[:12]})")
    return record[column]


def _rest(record: dict[str, Any], used: set[str]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in used}


def gsm8k_answer(solution: Any) -> tuple[str, dict[str, Any]]:
    """(final answer text, meta) from a GSM8K ``answer`` field."""
    if not isinstance(solution, str):
        raise RecordError("non_string", f"answer is {type(solution).__name__}, expected the GSM8K solution text")
    if GSM8K_MARKER not in solution:
        raise RecordError("unparseable_answer", f"no '{GSM8K_MARKER} <answer>' line in {solution[-80:]!r}")
    rationale, _, final = solution.rpartition(GSM8K_MARKER)
    final = final.strip()
    if not final:
        raise RecordError("unparseable_answer", f"nothing after '{GSM8K_MARKER}'")
    if "\n" in final:
        raise RecordError("unparseable_answer", f"text after the final answer: {final[:80]!r}")
    rationale = rationale.rstrip()
    meta = {
        "solution": rationale,
        "calculator_annotations": _CALC.findall(rationale),
        "steps": [_CALC.sub("", line).strip() for line in rationale.splitlines() if line.strip()],
    }
    return final, meta


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` in ``text`` (nested braces ok).

    Returns None when there is none, and raises :class:`RecordError` when the
    last one is never closed.
    """
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    if not starts:
        bare = re.findall(r"\\boxed\s+([^\s$]+)", text)  # "\boxed 5" form
        return bare[-1] if bare else None
    start = starts[-1]
    depth = 1
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
        i += 1
    raise RecordError("unparseable_answer", f"unclosed \\boxed{{ in {text[start - 7 : start + 60]!r}")


def adapt_gsm8k(record: dict[str, Any], columns: dict[str, str]) -> Extracted:
    q_col = columns.get("problem", "question")
    a_col = columns.get("answer", "answer")
    problem = _get(record, q_col, "problem")
    solution = _get(record, a_col, "answer")
    if solution is None or (isinstance(solution, str) and not solution.strip()):
        raise RecordError("missing_answer", f"column {a_col!r} is empty")
    final, meta = gsm8k_answer(solution)
    meta.update(_rest(record, {q_col, a_col}))
    return Extracted(problem, final, record.get(columns["split"]) if "split" in columns else None, meta)


def adapt_math(record: dict[str, Any], columns: dict[str, str]) -> Extracted:
    p_col = columns.get("problem", "problem")
    a_col = columns.get("answer", "answer")
    s_col = columns.get("solution", "solution")
    problem = _get(record, p_col, "problem")
    answer = record.get(a_col)
    meta = _rest(record, {p_col, a_col})
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        solution = record.get(s_col)
        if solution is None or (isinstance(solution, str) and not solution.strip()):
            raise RecordError("missing_answer", f"neither {a_col!r} nor {s_col!r} has a value")
        if not isinstance(solution, str):
            raise RecordError("non_string", f"{s_col!r} is {type(solution).__name__}")
        answer = last_boxed(solution)
        if answer is None:
            raise RecordError("unparseable_answer", f"no \\boxed{{}} in {s_col!r}: {solution[-80:]!r}")
        meta["answer_from"] = "boxed"
    return Extracted(problem, answer, record.get(columns["split"]) if "split" in columns else None, meta)


def adapt_generic(record: dict[str, Any], columns: dict[str, str]) -> Extracted:
    p_col = columns.get("problem", "problem")
    a_col = columns.get("answer", "answer")
    problem = _get(record, p_col, "problem")
    answer = _get(record, a_col, "answer")
    used = {p_col, a_col}
    split = None
    if "split" in columns:
        split = record.get(columns["split"])
        used.add(columns["split"])
    meta = _rest(record, used)
    if "id" in columns and columns["id"] in record:
        meta["source_id"] = meta.pop(columns["id"], None)
    return Extracted(problem, answer, split, meta)


def world_meta(value: Any) -> dict[str, Any] | None:
    """``value`` as a world meta dict (a dict or its JSON string, as exported), else None."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if isinstance(value, dict) and isinstance(value.get("world"), str) and "ops" in value and "start" in value:
        return value
    return None


def adapt_world(record: dict[str, Any], columns: dict[str, str]) -> Extracted:
    """Records of the built-in world source: meta is the world's rebuildable meta, as is."""
    raw = record.get("meta")
    meta = world_meta(raw)
    if meta is None and raw not in (None, {}, ""):
        raise RecordError("malformed_record", "'meta' is not a world problem's meta (needs world, start, ops)")
    return Extracted(record.get("problem"), record.get("answer"), None, dict(meta or {}))


def detect_adapter(record: dict[str, Any]) -> str:
    """The adapter a record's keys call for (``auto`` mode).

    World records (e.g. a world dataset exported and dropped into ``incoming/``)
    are recognised by their meta before ``math``, which would otherwise take
    them and nest the world meta under ``meta.meta``, hiding it from the oracle.
    """
    if "problem" in record and "answer" in record and world_meta(record.get("meta")) is not None:
        return "world"
    if "question" in record and isinstance(record.get("answer"), str) and GSM8K_MARKER in record["answer"]:
        return "gsm8k"
    if "problem" in record and ("solution" in record or "answer" in record):
        return "math"
    return "generic"


ADAPTERS = {"gsm8k": adapt_gsm8k, "math": adapt_math, "generic": adapt_generic, "world": adapt_world}


def extract(record: Any, adapter: str, columns: dict[str, str]) -> Extracted:
    """Run ``adapter`` (or ``auto``) on one record."""
    if not isinstance(record, dict):
        raise RecordError("malformed_record", f"record is {type(record).__name__}, expected an object")
    name = detect_adapter(record) if adapter == "auto" else adapter
    try:
        fn = ADAPTERS[name]
    except KeyError:
        raise ValueError(f"unknown adapter {adapter!r}; known: {sorted(ADAPTERS)} or 'auto'") from None
    return fn(record, columns)
