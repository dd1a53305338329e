"""Final-answer extraction and grading against the gold answer.

Extraction understands the conventions policies actually use: ``\\boxed{...}``
(nested braces, the last box wins), "The (final) answer is X", GSM8K's
``#### X`` and ``Answer: X``. Grading first tries exact numeric equivalence
(integers, decimals, fractions, ``\\frac``, thousands separators, percent,
currency signs); answers that are not plain numbers (LaTeX expressions,
intervals, ...) go to ``math_verify`` (falling back to sympy's parser when it
is missing). Grading never raises: an answer it cannot judge is "incorrect".
"""

from __future__ import annotations

import re
import threading
from fractions import Fraction

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_TAIL_PATTERNS = (
    # lookahead captures: a match consumes only its cue, so a later restatement is found too
    re.compile(r"[Tt]he\s+(?:final\s+)?answer\s+is\s*:?\s*(?=(.+))"),
    re.compile(r"####\s*(?=(.+))"),
    re.compile(r"(?:^|\s)\**Answer\**\s*:\s*(?=(.+))"),
)
_NUM = re.compile(r"^[-+]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?$|^[-+]?\.\d+$")
_FRAC = re.compile(r"^([-+]?)\\[dt]?frac\s*\{\s*([-+]?\d+)\s*\}\s*\{\s*([-+]?\d+)\s*\}$")
_SLASH = re.compile(r"^([-+]?\d+)\s*/\s*(\d+)$")


def _boxed_contents(text: str) -> list[str]:
    out = []
    for m in _BOXED.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append(text[m.end() : i - 1])
    return out


def _clean_tail(s: str) -> str:
    """The answer at the start of a "The answer is ..." tail: up to the line end, no trailing period."""
    s = s.split("\n", 1)[0].strip()
    boxed = _boxed_contents(s)
    if boxed:
        return boxed[-1].strip()
    s = s.strip().strip("*").strip()
    if s.startswith("$") and s.count("$") >= 2:
        s = s[1 : s.index("$", 1)]
    # a sentence may go on after the number ("18 dollars.", "5. So ...")
    m = re.match(r"^\s*(\$?\s*[-+]?[\d,]*\.?\d+(?:\s*/\s*\d+)?\s*%?)", s)
    if m and m.group(1).strip():
        return m.group(1).strip()
    return s.rstrip(".").strip()


def extract_answer(text: str) -> str | None:
    """The final answer stated in ``text``, or None if it states none."""
    if not text:
        return None
    boxed = _boxed_contents(text)
    if boxed:
        return boxed[-1].strip() or None
    best: tuple[int, str] | None = None
    for pat in _TAIL_PATTERNS:
        for m in pat.finditer(text):
            if best is None or m.start(1) >= best[0]:
                best = (m.start(1), m.group(1))
    if best is None:
        return None
    ans = _clean_tail(best[1])
    return ans or None


def parse_number(s: str) -> tuple[Fraction, bool] | None:
    """``(value, was_percent)`` of a plain numeric answer, else None."""
    t = s.strip()
    t = re.sub(r"^\\text\{(.*)\}$", r"\1", t)
    t = t.replace("\\$", "").replace("$", "").replace("\\!", "").replace("\\,", "").replace("{,}", ",")
    t = t.strip().rstrip(".").strip()
    percent = False
    if t.endswith("\\%") or t.endswith("%"):
        percent = True
        t = t[:-2] if t.endswith("\\%") else t[:-1]
        t = t.strip()
    t = t.replace(" ", "")
    if _NUM.match(t):
        return Fraction(t.replace(",", "")), percent
    m = _FRAC.match(t)
    if m and int(m.group(3)) != 0:
        v = Fraction(int(m.group(2)), int(m.group(3)))
        return (-v if m.group(1) == "-" else v), percent
    m = _SLASH.match(t)
    if m and int(m.group(2)) != 0:
        return Fraction(int(m.group(1)), int(m.group(2))), percent
    return None


def _symbolic_equal(pred: str, gold: str) -> bool:
    try:
        from math_verify import parse, verify
    except ImportError:  # pragma: no cover - math-verify is a dependency
        return _sympy_equal(pred, gold)
    # math_verify's timeouts use SIGALRM, which only works in the main thread.
    main = threading.current_thread() is threading.main_thread()
    kw = {} if main else {"parsing_timeout": None}
    try:
        g = parse(f"${gold}$", **kw)
        p = parse(f"${pred}$", **kw)
        if not g or not p:
            return False
        return bool(verify(g, p, **({} if main else {"timeout_seconds": None})))
    except Exception:
        return False


def _sympy_equal(pred: str, gold: str) -> bool:
    try:
        import sympy

        a = sympy.sympify(pred.replace("^", "**"))
        b = sympy.sympify(gold.replace("^", "**"))
        return bool(sympy.simplify(a - b) == 0)
    except Exception:
        return False


def answers_match(pred: str | None, gold: str | None) -> bool:
    """Is the extracted ``pred`` equivalent to ``gold``? Never raises."""
    if pred is None or gold is None:
        return False
    pred, gold = pred.strip(), gold.strip()
    if not pred or not gold:
        return False
    if pred == gold:
        return True
    pn, gn = parse_number(pred), parse_number(gold)
    if pn is not None and gn is not None:
        (pv, pp), (gv, gp) = pn, gn
        if pv == gv:
            return True
        # "50%" may be graded against 0.5 (and vice versa)
        return (pp and not gp and pv / 100 == gv) or (gp and not pp and gv / 100 == pv)
    if pn is not None and gn is None and parse_number(extract_answer(gold) or "") is not None:
        return answers_match(pred, extract_answer(gold))
    return _symbolic_equal(pred, gold)


def grade(completion_text: str, gold: str) -> tuple[str | None, bool]:
    """``(extracted answer, correct)`` of a completion against the gold answer."""
    pred = extract_answer(completion_text)
    return pred, answers_match(pred, gold)
