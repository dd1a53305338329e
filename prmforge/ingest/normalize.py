"""Text and answer normalisation, stable ids and n-grams.

Three normal forms, each for one job:

* :func:`clean_text` — what is *stored*: the author's text with line endings
  unified and outer whitespace stripped (LaTeX and case untouched).
* :func:`id_text` — what the *id* hashes: NFKC and all whitespace runs
  collapsed, so re-encoded or re-wrapped copies of a problem get the same id.
* :func:`match_words` — what *decontamination* compares: lower-case
  alphanumeric words, so punctuation and spacing differences between a seed
  copy and a benchmark copy do not hide contamination.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata

_WS = re.compile(r"\s+")
_NON_WORD = re.compile(r"[^0-9a-z]+")
_NUMBER = re.compile(r"^[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?$")
_CURRENCY = re.compile(r"^\$\s*")


class AnswerError(ValueError):
    """An answer that cannot be turned into a normalised string."""


def clean_text(text: str) -> str:
    """Stored form: ``\\r\\n``/``\\r`` → ``\\n``, outer whitespace stripped."""
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def id_text(text: str) -> str:
    """Hashed form: NFKC, whitespace runs collapsed to one space, stripped."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def problem_id(text: str, source: str) -> str:
    """Stable id: sha256 of ``source`` and the id form of the text (16 hex chars).

    ``source`` is the dataset key, so the same text in two datasets has two
    ids (cross-dataset duplicates are found by text, see ``text_key``).
    """
    h = hashlib.sha256(f"{source}\x1f{id_text(text)}".encode())
    return h.hexdigest()[:16]


def text_key(text: str) -> str:
    """Source-independent key of a problem text, for cross-partition dedupe."""
    return hashlib.sha256(id_text(text).encode()).hexdigest()[:24]


def match_words(text: str) -> list[str]:
    """Decontamination form: NFKC, lower-case, alphanumeric words only."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).split()


def ngrams(words: list[str], n: int) -> set[str]:
    """All ``n``-word windows of ``words`` joined by spaces (empty if shorter)."""
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def _balanced(text: str) -> bool:
    depth = 0
    escaped = False
    for ch in text:
        if escaped:
            escaped = False
            continue
        if ch == "\\":
            escaped = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def normalize_number(text: str) -> str | None:
    """``"1,000"``→``"1000"``, ``"3.50"``→``"3.5"``, ``"-0"``→``"0"``; None if not a plain number.

    Pure string arithmetic (no float/Decimal): exact for any number of digits.
    """
    s = _CURRENCY.sub("", text.strip())
    if not s or not _NUMBER.match(s) or not any(c.isdigit() for c in s):
        return None
    sign = "-" if s[0] == "-" else ""
    s = s.lstrip("+-").replace(",", "")
    whole, _, frac = s.partition(".")
    whole = whole.lstrip("0") or "0"
    frac = frac.rstrip("0")
    out = f"{whole}.{frac}" if frac else whole
    return "0" if out == "0" else sign + out


def normalize_answer(value: object) -> str:
    """The stored answer string, or :class:`AnswerError` if it cannot be one.

    * str: whitespace collapsed; a plain number (thousands separators, a
      leading ``$``, trailing zeros) is canonicalised; anything else (LaTeX,
      fractions, words) is kept as written. Empty text or unbalanced braces
      cannot be parsed.
    * int / float: accepted when finite (JSON and Parquet often store numeric
      answers as numbers); ``12.0`` becomes ``"12"``. bool is refused.
    """
    if isinstance(value, bool):
        raise AnswerError(f"boolean {value!r} is not an answer")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise AnswerError(f"non-finite number {value!r}")
        text = repr(value)
        if "e" in text or "E" in text:  # 1e+20 -> 100000000000000000000
            from decimal import Decimal

            text = format(Decimal(text), "f")
        return normalize_number(text) or text
    if not isinstance(value, str):
        raise AnswerError(f"{type(value).__name__} is not a string or number")
    s = _WS.sub(" ", value).strip()
    if s.startswith("$") and s.endswith("$") and len(s) > 1 and normalize_number(s) is None:
        s = s.strip("$").strip()  # inline-math delimiters: $\frac{1}{2}$ -> \frac{1}{2}
    if not s:
        raise AnswerError("empty answer")
    if not _balanced(s):
        raise AnswerError(f"unbalanced braces in {s[:80]!r}")
    return normalize_number(s) or s
