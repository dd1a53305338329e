"""Rule-based step verifier: recompute every arithmetic statement with exact rationals.

Why: an arithmetic slip (``12 x 3 = 38``) is the one error class a program can
find with certainty, with no model and no sampling. It is the embedded default
judge for consensus filtering: it sees arithmetic slips and is blind to logic
errors (wrong operand, skipped step), so a rollout on which it agrees with
Monte Carlo estimation is one whose label two independent methods support.

What is checked in each step:

* ``a op b = c`` with ``+ - − x × * · / ÷ ^`` (and ``\\times \\cdot \\div
  \\frac{a}{b}``), parentheses and operator precedence;
* chained equalities ``a + b = c + d = e`` (every adjacent pair must be equal);
* GSM8K calculator annotations ``<<48/2=24>>``;
* numbers with thousands separators, decimals, ``$`` and ``%``.

Conservative by design (a judge that cries wolf destroys consensus):

* an equality is only checked when at least one side contains an operator
  (``x = 5`` or ``50% of 80 = 40`` — where ``of`` hides the operation — is not
  an arithmetic claim we can verify);
* text after the result is ignored (``= 9 (note)``, ``= 9 apples.``);
* a result is wrong only beyond the precision it is written with: a decimal
  result is accepted when it is the exact value rounded or cut to its number
  of decimals (``10 / 3 = 3.33``, ``20/26 = 0.77``, ``1547 / 3 = 515.66``,
  ``1/7 = 0.142857...``) or floating-point output printed in full, off in
  its last places only (``<<1/7=0.14285714285714285>>``,
  ``0.1+0.2 = 0.30000000000000004``);
  an integer result must be exact (``56/6 = 9`` is wrong), except that a step
  about quotients and remainders ("9 ÷ 7 = 1 with a remainder of 2") may state
  the integer part;
* a side glued to a symbol is not a number: ``f(5) = 12(5) + 7``,
  ``f^{-1}(9)``, ``\\pi(6)^2``, ``= 5AD^2``, ``= 20\\pi``, ``= 3ab``,
  ``= 0.0011_2`` (a base-2 numeral), ``\\frac{4}{5}(x-3)``: those sides are dropped;
* ``2\\frac{6}{7}`` is a mixed number (2 + 6/7), and ``\\( \\)``/``\\[ \\]`` math
  delimiters are read as space;
* ``%`` is read as ``/100``; a mismatch that disappears when ``%`` is ignored
  (``100 - 20 = 80%``) is accepted;
* division by zero, huge powers and anything unparsable are skipped, never flagged.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

_ANNOTATION = re.compile(r"<<([^<>]*?)>>")
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]+)\}\s*\{([^{}]+)\}")
_MIXED = re.compile(r"(?<![\d.])(\d+)\s*\\[dt]?frac\s*\{\s*(\d+)\s*\}\s*\{\s*(\d+)\s*\}")
# a quotient-and-remainder step may state the integer part of a division
_FLOOR_CUES = re.compile(r"remainder|quotient|\bR\b|\\lfloor|\bfloor|\bwhole\b|\bfull\b|\bcomplete\b",
                         re.IGNORECASE)
# before a run: a glued letter, subscript, brace or prime ("f(5)", "r_3(", "f^{-1}(9)", "f''(4)"),
# or a math command ("\pi (1.5)^3"): the run's first side is the tail of a symbolic product
_SYMBOL_BEFORE = re.compile(r"(?:[A-Za-z_}'^]|\\(?!text|mbox|quad|qquad)[A-Za-z]+\s*)$")
# after a run: a glued letter or subscript ("5AD^2", "0.0011_2"), a math command ("20\pi", "12 \cos C")
# or a repeating-decimal mark ("0.\overline{027}"): the last side goes on symbolically
_SYMBOL_AFTER = re.compile(r"^(?:[A-Za-z_]|\.?\\(?!text|mbox|quad|qquad|right|end)[A-Za-z]+|\s+\\(?!text|mbox|quad|qquad"
                           r"|right|end)[A-Za-z]+)")
_LATEX_SUBS = (
    (re.compile(r"\\times"), " × "),
    (re.compile(r"\\cdot"), " × "),
    (re.compile(r"\\div"), " ÷ "),
    (re.compile(r"\{,\}"), ","),
    (re.compile(r"\\[,!;:]"), " "),
    (re.compile(r"\\left|\\right"), ""),
    (re.compile(r"\\[()\[\]]"), " ; "),  # math delimiters end a run: "\\[ 21^2 = 441 \\] \\[ ..."
    (re.compile(r"\\\$"), "$"),
)

# One token at a time; order matters (numbers before ops, '**' before '*').
_TOKEN = re.compile(
    r"""
    (?P<num>\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?|\$?\.\d+%?)
  | (?P<cmp><=|>=|!=|==|=>|<|>|≠|≈|≤|≥)
  | (?P<eq>=)
  | (?P<pow>\*\*|\^)
  | (?P<op>[+\-−–*/×÷·])
  | (?P<x>(?<=[\s)])[xX](?=[\s(])|(?<=\d)[xX](?=\d))
  | (?P<var>(?<=[\d)])[A-Za-z](?![A-Za-z])|(?<=\d):(?=\d)|(?<=\d),\s?(?=\d))
  | (?P<lp>\()
  | (?P<rp>\))
  | (?P<ws>\s+)
  | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)

_MAX_EXPONENT = 64
_MAX_ABS = Fraction(10) ** 60


@dataclass(frozen=True)
class Tok:
    kind: str  # num | op | pow | lp | rp | eq | var
    text: str
    value: Fraction | None = None
    value_no_pct: Fraction | None = None
    spaced_after: bool = False  # whitespace follows (tells "- 3" from "-3")
    glued: bool = False  # no whitespace before (tells "\\frac{4}{5}(x-3)" from "= 9 (note)")


@dataclass(frozen=True)
class Finding:
    """One arithmetic statement that does not hold."""

    step: int
    statement: str
    expected: str
    stated: str


def _parse_number(text: str) -> tuple[Fraction, Fraction]:
    raw = text.replace("$", "").replace(",", "").strip()
    pct = raw.endswith("%")
    raw = raw.rstrip("%")
    value = Fraction(raw)
    return (value / 100 if pct else value), value


def _normalise(text: str) -> str:
    text = _MIXED.sub(r"(\1+\2/\3)", text)
    text = _LATEX_FRAC.sub(r"((\1)/(\2))", text)
    for pattern, repl in _LATEX_SUBS:
        text = pattern.sub(repl, text)
    return text


def tokenize(text: str) -> list[Tok | None]:
    """Arithmetic tokens; ``None`` marks anything that breaks an expression run."""
    return [t for t, _, _ in _spans(text)]


def _spans(text: str) -> list[tuple[Tok | None, int, int]]:
    """``(token, start, end)`` for every token of ``text`` (whitespace left out)."""
    out: list[tuple[Tok | None, int, int]] = []
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        s = m.group()
        if kind == "ws":
            continue
        if kind == "num":
            try:
                v, v_raw = _parse_number(s)
            except (ValueError, ZeroDivisionError):
                out.append((None, m.start(), m.end()))
                continue
            out.append((Tok("num", s, v, v_raw), m.start(), m.end()))
        elif kind == "op" or kind == "x":
            op = {"−": "-", "–": "-", "×": "*", "x": "*", "X": "*", "·": "*", "÷": "/"}.get(s, s)
            spaced = m.end() < len(text) and text[m.end()].isspace()
            out.append((Tok("op", op, spaced_after=spaced), m.start(), m.end()))
        elif kind == "pow":
            out.append((Tok("pow", "^"), m.start(), m.end()))
        elif kind == "var":  # "4x", "(5/2)x", "60g": a variable or unit glued on
            out.append((Tok("var", s), m.start(), m.end()))
        elif kind in ("lp", "rp", "eq"):
            out.append((Tok(kind, s, glued=m.start() > 0 and not text[m.start() - 1].isspace()), m.start(), m.end()))
        else:
            out.append((None, m.start(), m.end()))
    return out


class _Unparsable(Exception):
    pass


class _Parser:
    """Recursive-descent evaluation of one token list, exact in ``Fraction``."""

    def __init__(self, toks: Sequence[Tok], raw_pct: bool) -> None:
        self.toks = toks
        self.i = 0
        self.raw_pct = raw_pct
        self.n_ops = 0

    def peek(self) -> Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> Tok:
        t = self.peek()
        if t is None:
            raise _Unparsable("unexpected end")
        self.i += 1
        return t

    def expr(self) -> Fraction:
        v = self.term()
        while (t := self.peek()) is not None and t.kind == "op" and t.text in "+-":
            self.take()
            self.n_ops += 1
            r = self.term()
            v = v + r if t.text == "+" else v - r
            self._bound(v)
        return v

    def term(self) -> Fraction:
        v = self.unary()
        while (t := self.peek()) is not None and ((t.kind == "op" and t.text in "*/") or t.kind == "lp"):
            if t.kind == "lp":  # implicit multiplication: 2(3), 1/2 (68)
                t = Tok("op", "*")
            else:
                self.take()
            self.n_ops += 1
            r = self.unary()
            if t.text == "*":
                v = v * r
            else:
                if r == 0:
                    raise _Unparsable("division by zero")
                v = v / r
            self._bound(v)
        return v

    def unary(self) -> Fraction:
        t = self.peek()
        if t is not None and t.kind == "op" and t.text == "-":
            self.take()
            return -self.unary()
        return self.power()

    def power(self) -> Fraction:
        base = self.atom()
        t = self.peek()
        if t is not None and t.kind == "pow":
            self.take()
            self.n_ops += 1
            exp = self.unary()
            if exp.denominator != 1 or abs(exp) > _MAX_EXPONENT or (base == 0 and exp < 0):
                raise _Unparsable("unsupported power")
            base = base ** int(exp)
            self._bound(base)
        return base

    def atom(self) -> Fraction:
        t = self.take()
        if t.kind == "num":
            return t.value_no_pct if self.raw_pct else t.value
        if t.kind == "lp":
            v = self.expr()
            if self.take().kind != "rp":
                raise _Unparsable("unbalanced parenthesis")
            return v
        raise _Unparsable(f"unexpected {t.text!r}")

    @staticmethod
    def _bound(v: Fraction) -> None:
        if abs(v) > _MAX_ABS:
            raise _Unparsable("number too large")


def _evaluate(toks: Sequence[Tok], raw_pct: bool = False) -> tuple[Fraction, int] | None:
    """Value and operator count of a complete expression, or None."""
    if not toks:
        return None
    p = _Parser(toks, raw_pct)
    try:
        v = p.expr()
    except _Unparsable:
        return None
    if p.i != len(toks):
        return None
    return v, p.n_ops


def _longest_prefix(toks: Sequence[Tok]) -> list[Tok] | None:
    """The longest prefix of ``toks`` that is a complete expression (the result side)."""
    for end in range(len(toks), 0, -1):
        if _evaluate(toks[:end]) is not None:
            return list(toks[:end])
    return None


def _decimals(tok_text: str) -> int:
    raw = tok_text.replace("$", "").replace(",", "").rstrip("%").strip()
    return len(raw.split(".", 1)[1]) if "." in raw else 0


def _significant_digits(tok_text: str) -> int:
    return len(re.sub(r"\D", "", tok_text).lstrip("0"))


def _close_enough(exact: Fraction, stated: Fraction, stated_toks: Sequence[Tok], floor_ok: bool = False) -> bool:
    """Equal within the precision the stated result is written with (see the module docstring)."""
    if exact == stated:
        return True
    if len(stated_toks) != 1 or stated_toks[0].kind != "num":
        return False
    d = _decimals(stated_toks[0].text)
    if d == 0:  # an integer is exact, or the integer part of a quotient with remainder
        return floor_ok and stated == int(exact)
    scale = 10**d
    if abs(exact - stated) <= Fraction(1, 2 * scale):  # rounded
        return True
    if stated == Fraction(int(exact * scale), scale):  # cut ("515.66", "0.142857...")
        return True
    # floating-point output printed in full (15-17 significant digits): wrong only in the
    # last places, where float arithmetic rounds ("0.30000000000000004")
    return _significant_digits(stated_toks[0].text) >= 15 and abs(exact - stated) <= abs(exact) * Fraction(1, 10**14)


def _side_equal(a: Sequence[Tok], b: Sequence[Tok], floor_ok: bool = False) -> bool | None:
    """Whether two expressions are equal (None if either cannot be evaluated)."""
    results = []
    for raw_pct in (False, True):
        ea, eb = _evaluate(a, raw_pct), _evaluate(b, raw_pct)
        if ea is None or eb is None:
            return None
        results.append(_close_enough(ea[0], eb[0], b, floor_ok) or _close_enough(eb[0], ea[0], a, floor_ok))
    return any(results)


def _fmt(toks: Sequence[Tok]) -> str:
    return " ".join(t.text for t in toks)


def check_statements(text: str, step: int = 0) -> list[Finding]:
    """Every false arithmetic statement in ``text`` (annotations included)."""
    findings: list[Finding] = []
    floor_ok = bool(_FLOOR_CUES.search(text))
    for m in _ANNOTATION.finditer(text):
        findings.extend(_check_run(tokenize(_normalise(m.group(1))), step, floor_ok=floor_ok))
    body = _ANNOTATION.sub(" ", _normalise(text))
    run: list[Tok] = []
    start = end = 0
    for t, a, b in [*_spans(body), (None, len(body), len(body))]:
        if t is None:
            if any(x.kind == "eq" for x in run):
                findings.extend(_check_run(run, step, floor_ok=floor_ok,
                                           drop_head=bool(_SYMBOL_BEFORE.search(body[:start] + (
                                               " " if start > 0 and body[start - 1].isspace() else ""))),
                                           drop_tail=run[-1].kind != "lp" and bool(_SYMBOL_AFTER.match(body[end:]))))
            run = []
        else:
            if not run:  # a number token may start with the space before it ("took 2*8")
                start = a + len(body[a:b]) - len(body[a:b].lstrip())
            run.append(t)
            end = b
    return findings


def _check_run(run: Sequence[Tok | None], step: int, floor_ok: bool = False, drop_head: bool = False,
               drop_tail: bool = False) -> list[Finding]:
    """Check one maximal run of arithmetic tokens containing ``=``.

    ``drop_head``/``drop_tail``: the first/last side is glued to a symbol outside
    the run (``f(5) = ...``, ``... = 5AD^2``) and is no number.
    """
    if any(t is None for t in run):
        # annotation content with stray text: check the arithmetic pieces only
        out: list[Finding] = []
        cur: list[Tok] = []
        for t in [*run, None]:
            if t is None:
                if any(x.kind == "eq" for x in cur):
                    out.extend(_check_run(cur, step, floor_ok=floor_ok))
                cur = []
            else:
                cur.append(t)
        return out
    segments: list[list[Tok]] = [[]]
    for t in run:
        if t.kind == "eq":
            segments.append([])
        else:
            segments[-1].append(t)
    if drop_head:
        segments = segments[1:]
    if drop_tail:
        segments = segments[:-1]
    if len(segments) < 2:
        return []
    # The left side must be the whole segment: a segment that only parses once
    # trimmed ("60g * 4/5", "3 1/2 + 1") continues beyond what we can see.
    # A leading "- 3" (spaced) continues a subtraction we cannot see
    # ("40 marbles - 3 - 5 = 32"); "-3 + 5" is a negative number.
    head = segments[0]
    if _evaluate(head) is None or (head[0].kind == "op" and head[0].spaced_after):
        return []
    sides: list[list[Tok]] = [list(head)]
    for seg in segments[1:-1]:
        if _evaluate(seg) is None:
            break
        sides.append(list(seg))
    else:
        last = segments[-1] if drop_tail and _evaluate(segments[-1]) is not None else _longest_prefix(segments[-1])
        rest = segments[-1][len(last):] if last is not None else []
        # "= 3 1/2" (mixed number), "= $12 000", "= (3/4)*number", "= 4x": the
        # result continues past what we can evaluate; skip it. "= 9 (note)" is fine.
        continues = bool(rest) and (rest[0].kind in ("num", "op", "pow", "var") or
                                    (rest[0].kind == "lp" and (len(rest) > 1 or rest[0].glued)))
        if last is not None and not continues:
            sides.append(last)
    # "Week 2 = 35 + 35", "48 = 100% + 20%": a bare number left of an
    # expression is a label, not a claim.
    if len(sides) > 1 and len(sides[0]) == 1 and _evaluate(sides[1]) is not None and _evaluate(sides[1])[1] > 0:
        sides = sides[1:]
    evaluated = [_evaluate(s) for s in sides]
    if not any(e is not None and e[1] > 0 for e in evaluated):
        return []  # "x = 5", "of 80 = 40": no operation is claimed
    findings: list[Finding] = []
    for a, b in zip(sides, sides[1:], strict=False):
        ea, eb = _evaluate(a), _evaluate(b)
        if ea is None or eb is None:
            continue
        if _side_equal(a, b, floor_ok) is False:
            findings.append(Finding(step=step, statement=f"{_fmt(a)} = {_fmt(b)}",
                                    expected=_show(ea[0]), stated=_fmt(b)))
    return findings


def _show(v: Fraction) -> str:
    if v.denominator == 1:
        return str(v.numerator)
    as_float = float(v)
    return f"{v.numerator}/{v.denominator} (~{as_float:.6g})"


def first_wrong_step(steps: Sequence[str]) -> int:
    """Index of the first step containing a false arithmetic statement, or -1."""
    for i, step in enumerate(steps):
        if check_statements(step, i):
            return i
    return -1


def explain(steps: Sequence[str]) -> tuple[int, list[Finding]]:
    """First wrong step and the findings in it (for metadata and debugging)."""
    for i, step in enumerate(steps):
        found = check_statements(step, i)
        if found:
            return i, found
    return -1, []
