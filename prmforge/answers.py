"""Final-answer extraction and grading against the gold answer.

Extraction understands the final-answer conventions of the common sources
(tested on real lines from GSM8K, MATH and ProcessBench in
``tests/data/answer_lines.jsonl``):

* ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces; the last box wins);
* "The (final) answer is X" (also "is: X", ``$X$``, ``\\(X\\)``, ``**X**``);
* GSM8K's ``#### X``;
* ``Answer: X``, ``**Answer:** X``, ``Final Answer: X`` and a line ``A: X``
  (the "Q: ... A: ..." few-shot format);
* failing all of those, a concluding sentence ("Therefore, ...", "So ...")
  that states exactly one number: the prose endings of instruct models
  ("So, Josh made a profit of $195,000."). A sentence with several numbers is
  ambiguous and gives no answer rather than a guess.

The last match wins: a solution may restate intermediate claims before its
conclusion. Grading first tries exact numeric equivalence (integers,
decimals, fractions, ``\\frac``, thousands separators, percent, currency signs
and trailing units such as ``18 dollars`` or ``5\\text{ cm}``); answers that
are not plain numbers (LaTeX expressions, intervals, ...) go to
``math_verify`` (falling back to sympy's parser when it is missing). Grading
never raises: an answer it cannot judge is "incorrect".
"""

from __future__ import annotations

import re
import threading
from fractions import Fraction

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_TAIL_PATTERNS = (
    # lookahead captures: a match consumes only its cue, so a later restatement is found too
    re.compile(r"[Tt]he\s+(?:final\s+)?answer\s+is\s*\**\s*:?\s*\**\s*(?=(.+))"),
    re.compile(r"####\s*(?=(.+))"),
    re.compile(r"(?:^|\s)\**(?:[Ff]inal\s+)?[Aa]nswer\**\s*:\s*\**\s*(?=(.+))"),
    re.compile(r"(?m)^\s*\**A\**\s*:\s*\**\s*(?=(.+))"),
)
_NUMBER_TEXT = r"-?\$?\s?-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?"
_CONCLUSION = re.compile(r"(?:^|[.!\n]\s*)(?:Therefore|Thus|Hence|So|In total|In conclusion|Finally)\b[^.!\n]*"
                         r"(?:\.\d[^.!\n]*)*")
_NUM = re.compile(r"^[-+]?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?$|^[-+]?\.\d+$")
_FRAC = re.compile(r"^([-+]?)\\[dt]?frac\s*\{\s*([-+]?\d+)\s*\}\s*\{\s*([-+]?\d+)\s*\}$")
_SLASH = re.compile(r"^([-+]?\d+)\s*/\s*(\d+)$")
# "18 dollars", "5\text{ cm}^2", "4 liters", "30^\circ": a unit after a number
_UNIT = re.compile(r"^(.*?\d)\s*(?:\\(?:text|mbox|mathrm)\s*\{[^{}]*\}|[A-Za-z]+\.?)(?:\s*\^\s*\{?\d\}?)?"
                   r"(?:\s+[A-Za-z]+\.?)*$")
_DEGREES = re.compile(r"\^\s*\{?\\circ\}?|°")


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
    elif s.startswith("\\(") and "\\)" in s:
        s = s[2 : s.index("\\)")]
    elif s.startswith("\\[") and "\\]" in s:
        s = s[2 : s.index("\\]")]
    s = s.strip().strip("*").strip()
    # a sentence may go on after the number ("18 dollars.", "5. So ...")
    m = re.match(r"^\s*(\\?\$?\s*[-+]?[\d,]*\.?\d+(?:\s*/\s*\d+)?\s*\\?%?)(?![\d\w^{])", s)
    if m and m.group(1).strip():
        return m.group(1).strip()
    return s.rstrip(".").strip()


def _concluding_number(text: str) -> str | None:
    """The one number of the last concluding sentence ("Therefore, he pays $37."), else None."""
    tail = text.strip()[-600:]
    tail = re.sub(r"\\[()\[\]]", " ", tail).replace("**", "")
    matches = list(_CONCLUSION.finditer(tail))
    if not matches:
        return None
    sentence = matches[-1].group(0)
    nums = re.findall(_NUMBER_TEXT + r"(?![\d.]*\d)", sentence)
    nums = [n for n in nums if re.search(r"\d", n)]
    return nums[0].strip() if len(nums) == 1 else None


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
        return _concluding_number(text)
    ans = _clean_tail(best[1])
    return ans or None


def parse_number(s: str) -> tuple[Fraction, bool] | None:
    """``(value, was_percent)`` of a plain numeric answer (units and currency dropped), else None."""
    t = s.strip()
    t = re.sub(r"^\\text\{(.*)\}$", r"\1", t)
    t = _DEGREES.sub("", t)
    t = re.sub(r"^\\(?=\d)", "", t)  # "\\15": a "\\$15" that lost its dollar sign
    t = t.replace("\\$", "").replace("$", "").replace("\\!", "").replace("\\,", "").replace("{,}", ",")
    t = t.replace("\\ ", " ").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    t = t.strip().rstrip(".").strip()
    unit = _UNIT.match(t)
    if unit and not re.search(r"[A-Za-z]", re.sub(r"\\frac", "", unit.group(1))):
        t = unit.group(1).strip()
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
