"""Step splitting, answer extraction and grading."""

from __future__ import annotations

import threading

import pytest

from prmforge.answers import answers_match, extract_answer, grade, parse_number
from prmforge.steps import PARAGRAPH_SEPARATOR, resolve_separator, split_steps
from prmforge.world import STEP_SEPARATOR


def test_split_steps_paragraphs_and_world() -> None:
    text = "First we add.\n\n  3 + 4 = 7\n\n\n\nThe answer is 7.\n\n"
    assert split_steps(text) == ["First we add.", "3 + 4 = 7", "The answer is 7."]
    assert split_steps("a = 1\nb = 2\n\nThe answer is 2.", "\n") == ["a = 1", "b = 2", "The answer is 2."]
    assert split_steps("   \n\n  ") == []
    with pytest.raises(ValueError):
        split_steps("x", "")


def test_resolve_separator() -> None:
    assert resolve_separator("auto", bootstrap_policy=True) == STEP_SEPARATOR
    assert resolve_separator("auto", bootstrap_policy=False) == PARAGRAPH_SEPARATOR
    assert resolve_separator("world", bootstrap_policy=False) == STEP_SEPARATOR
    assert resolve_separator("paragraph", bootstrap_policy=True) == "\n\n"
    assert resolve_separator("\n---\n", bootstrap_policy=True) == "\n---\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so the total is \\boxed{\\frac{1}{2}} indeed", "\\frac{1}{2}"),
        ("\\boxed{3} then later \\boxed{\\{1, {2}\\}}", "\\{1, {2}\\}"),
        ("Step 1: 3+4=7.\nThe answer is 7.", "7"),
        ("The final answer is: $1,234$.", "1,234"),
        ("He pays 5 * 3 = 15.\n#### 15", "15"),
        ("Answer: -2.5", "-2.5"),
        ("The answer is 18 dollars. Done.", "18"),
        ("The answer is 4. Wait, the answer is 5.", "5"),
        ("The answer is \\boxed{12}.", "12"),
        ("The answer is $\\frac{3}{4}$.", "\\frac{3}{4}"),
        ("no answer here, just 42", None),
        ("", None),
        ("\\boxed{unbalanced", None),
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_parse_number() -> None:
    assert parse_number("1,234") is not None and parse_number("1,234")[0] == 1234
    assert parse_number("$18.00")[0] == 18
    assert parse_number("\\frac{3}{4}")[0] == parse_number("0.75")[0]
    assert parse_number("-3/6")[0] == parse_number("-0.5")[0]
    assert parse_number("50\\%") == (50, True)
    assert parse_number("x + 1") is None
    assert parse_number("1/0") is None


@pytest.mark.parametrize(
    ("pred", "gold", "ok"),
    [
        ("1,234", "1234", True),
        ("18.00", "18", True),
        ("$18", "18", True),
        ("0.75", "\\frac{3}{4}", True),
        ("3/4", "0.75", True),
        ("50%", "50", True),
        ("50%", "0.5", True),
        ("17", "18", False),
        ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2", True),
        ("x^2 + 2x + 1", "(x+1)^2", True),
        ("\\pi", "3", False),
        (None, "3", False),
        ("", "3", False),
        ("7", "The answer is 7.", True),
    ],
)
def test_answers_match(pred: str | None, gold: str, ok: bool) -> None:
    assert answers_match(pred, gold) is ok


def test_grading_works_outside_the_main_thread() -> None:
    results: list[bool] = []
    t = threading.Thread(target=lambda: results.append(answers_match("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2")))
    t.start()
    t.join()
    assert results == [True]


def test_grade() -> None:
    assert grade("3 + 4 = 7\nThe answer is 7.", "7") == ("7", True)
    assert grade("3 + 4 = 8\nThe answer is 8.", "7") == ("8", False)
    assert grade("I give up", "7") == (None, False)
    assert grade("\\boxed{\\dfrac{1}{3}}", "1/3") == ("\\dfrac{1}{3}", True)
