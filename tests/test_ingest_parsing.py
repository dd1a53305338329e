"""Answer normalisation, GSM8K and MATH parsing, ids and n-grams."""

from __future__ import annotations

import hashlib

import pytest

from prmforge.ingest.adapters import RecordError, detect_adapter, extract, gsm8k_answer, last_boxed
from prmforge.ingest.normalize import (
    AnswerError,
    match_words,
    ngrams,
    normalize_answer,
    problem_id,
    text_key,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1,000", "1000"),
        ("3.50", "3.5"),
        ("-0", "0"),
        ("+7", "7"),
        (".5", "0.5"),
        ("$18", "18"),
        ("  12  ", "12"),
        ("1,234,567.890", "1234567.89"),
        ("10.000", "10"),
        (12, "12"),
        (2.5, "2.5"),
        (12.0, "12"),
        ("\\frac{1}{2}", "\\frac{1}{2}"),
        ("\\frac{1}{2}  +\n  x", "\\frac{1}{2} + x"),
        ("$\\sqrt{2}$", "\\sqrt{2}"),
        ("(1, 2)", "(1, 2)"),
        ("1,00", "1,00"),  # not a thousands separator: kept as written
        ("x = 5", "x = 5"),
        ("9" * 40, "9" * 40),  # exact beyond float/Decimal precision
        (1e20, "100000000000000000000"),
        (-0.0, "0"),
        ("007", "7"),
    ],
)
def test_normalize_answer(raw: object, expected: str) -> None:
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize("raw", ["", "   ", "\\frac{1}{2", "}", float("nan"), float("inf"), True, [1], {"a": 1}])
def test_unparseable_answers(raw: object) -> None:
    with pytest.raises(AnswerError):
        normalize_answer(raw)


def test_gsm8k_answer_keeps_calculator_annotations_in_meta() -> None:
    final, meta = gsm8k_answer("Half is 48/2 = <<48/2=24>>24.\nTotal 48+24 = <<48+24=72>>72\n#### 72")
    assert final == "72"
    assert meta["calculator_annotations"] == ["48/2=24", "48+24=72"]
    assert "<<48/2=24>>" in meta["solution"]
    assert meta["steps"] == ["Half is 48/2 = 24.", "Total 48+24 = 72"]


def test_gsm8k_thousands_answer_is_normalised_end_to_end() -> None:
    ex = extract({"question": "How many?", "answer": "5 * 200 = <<5*200=1000>>1000\n#### 1,000"}, "gsm8k", {})
    assert normalize_answer(ex.answer) == "1000"


@pytest.mark.parametrize(
    "solution", ["No marker here, the answer is 5", "Work\n#### ", "Work\n#### 5\nextra line"],
)
def test_gsm8k_unparseable(solution: str) -> None:
    with pytest.raises(RecordError) as err:
        gsm8k_answer(solution)
    assert err.value.reason == "unparseable_answer"


def test_boxed_nested_braces_takes_the_last_box() -> None:
    text = "First \\boxed{1}. Finally $\\boxed{\\frac{\\sqrt{3}}{2}}$ is it."
    assert last_boxed(text) == "\\frac{\\sqrt{3}}{2}"
    assert last_boxed("so \\boxed{\\{1,2\\}}") == "\\{1,2\\}"  # escaped braces do not count
    assert last_boxed("\\fbox{7}") == "7"
    assert last_boxed("\\boxed 5 done") == "5"
    assert last_boxed("no box") is None
    with pytest.raises(RecordError):
        last_boxed("\\boxed{\\frac{1}{2}")


def test_math_adapter_answer_column_wins_over_solution() -> None:
    rec = {"problem": "P", "solution": "... \\boxed{4}", "answer": "5", "level": "Level 2"}
    ex = extract(rec, "math", {})
    assert ex.answer == "5" and ex.meta["level"] == "Level 2"
    ex = extract({"problem": "P", "solution": "so $\\boxed{x^{2}}$."}, "math", {})
    assert ex.answer == "x^{2}" and ex.meta["answer_from"] == "boxed"
    with pytest.raises(RecordError) as err:
        extract({"problem": "P", "solution": "no box"}, "math", {})
    assert err.value.reason == "unparseable_answer"


def test_auto_adapter_detection_and_generic_mapping() -> None:
    assert extract({"question": "Q", "answer": "w\n#### 3"}, "auto", {}).answer == "3"
    assert extract({"problem": "Q", "solution": "\\boxed{2}"}, "auto", {}).answer == "2"
    ex = extract({"q": "Q", "a": 9, "s": "test", "uid": "x1", "extra": 1}, "generic",
                 {"problem": "q", "answer": "a", "split": "s", "id": "uid"})
    assert (ex.problem, ex.answer, ex.split) == ("Q", 9, "test")
    assert ex.meta == {"source_id": "x1", "extra": 1}


def test_auto_detects_world_records_and_keeps_their_meta_flat() -> None:
    import json

    from prmforge.world import generate_problems

    p = generate_problems(1, seed=5, difficulty="easy")[0]
    for meta in (dict(p.meta), json.dumps(p.meta)):  # as the world source yields it, and as exported JSON
        record = {"problem": p.problem, "answer": p.answer, "meta": meta}
        assert detect_adapter(record) == "world"
        assert extract(record, "auto", {}).meta == p.meta
    # a MATH-style record with an unrelated meta column is still math (its meta kept under "meta")
    other = {"problem": "Q", "answer": "1", "meta": {"level": 3}}
    assert detect_adapter(other) == "math" and extract(other, "auto", {}).meta == {"meta": {"level": 3}}
    assert detect_adapter({"problem": "Q", "answer": "1", "meta": "{not json"}) == "math"
    with pytest.raises(RecordError) as err:  # the explicit world adapter refuses a meta it cannot rebuild from
        extract({"problem": "Q", "answer": "1", "meta": {"level": 3}}, "world", {})
    assert err.value.reason == "malformed_record"


def test_problem_id_is_stable_and_whitespace_insensitive() -> None:
    a = problem_id("What is  2+2?\n", "ds")
    assert a == problem_id("What is 2+2?", "ds")
    assert a != problem_id("What is 2+2?", "other")
    assert len(a) == 16 and int(a, 16) >= 0
    assert text_key("x  y") == text_key("x y")
    # the documented formula: stored data refers to ids, so it must not drift
    assert a == hashlib.sha256(b"ds\x1fWhat is 2+2?").hexdigest()[:16]


def test_ngrams_and_match_words() -> None:
    words = match_words("Janet's ducks lay 16 eggs, per DAY!")
    assert words == ["janet", "s", "ducks", "lay", "16", "eggs", "per", "day"]
    assert ngrams(words, 13) == set()
    assert len(ngrams(words, 3)) == 6
