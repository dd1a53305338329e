"""Step splitting, answer extraction and grading."""

from __future__ import annotations

import json
import threading
from pathlib import Path

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
        ("She makes 9 * 2 = 18 dollars.\nA: 18", "18"),
        ("Q: how many?\nA: 1,234 apples", "1,234"),
        ("**Answer:** 18", "18"),
        ("Final Answer: The final answer is \\((-6, \\frac{5}{2})\\). I hope it is correct.", "(-6, \\frac{5}{2})"),
        ("So, Josh made a profit of $195,000.", "$195,000"),
        ("Therefore, Alicia spends $225.00 on dry cleaning over 5 weeks.", None),
        ("The answer is: **42**", "42"),
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
        ("18 dollars", "18", True),
        ("100", "100\\text{ square units}", True),
        ("48", "48^\\circ", True),
        ("$8.00", "9", False),
        ("\\15", "15", True),
        ("27", "27.0", True),
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


CORPUS = Path(__file__).parent / "data" / "answer_lines.jsonl"


def _corpus() -> list[dict]:
    return [json.loads(line) for line in CORPUS.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("row", _corpus(), ids=lambda r: r["source"])
def test_real_answer_lines(row: dict) -> None:
    """Real final lines of GSM8K, MATH and ProcessBench solutions (``source`` says where each is from).

    ``answer`` is what a reader sees as the stated final answer (None: the line
    states none unambiguously); ``correct`` is the source's own verdict against
    ``gold`` (ProcessBench's ``final_answer_correct``, the MATH harness's score).
    """
    assert extract_answer(row["text"]) == row["answer"]
    if "gold" in row:
        assert grade(row["text"], row["gold"])[1] is row["correct"]


def test_corpus_covers_every_convention() -> None:
    texts = [r["text"] for r in _corpus()]
    for cue in ("####", "\nA: ", "**Answer:**", "The answer is", "\\boxed{\\frac", "Final Answer:", "So, ",
                "Therefore, ", "\\%", ",000", "\\text{"):
        assert any(cue in t for t in texts), cue


def test_all_gsm8k_reference_solutions_agree(shared_data: Path) -> None:
    """Every GSM8K reference solution (test + train) grades correct, also with its last line rewritten."""
    rows = [json.loads(line) for split in ("test", "train")
            for line in (shared_data / "gsm8k" / f"{split}.jsonl").read_text().splitlines()]
    assert len(rows) == 8792
    for row in rows:
        body, gold = row["answer"].rsplit("####", 1)
        gold = gold.strip()
        for text in (row["answer"], f"{body}A: {gold}", f"{body}The answer is {gold}.", f"{body}**Answer:** {gold}"):
            assert grade(text, gold) == (gold, True), text[-80:]


def test_processbench_and_math_model_solutions_agree_with_their_flags(shared_data: Path) -> None:
    """Real model solutions: our verdict against the source's correctness flag (figures in docs/real-data.md)."""
    gold = {json.loads(line)["question"].strip(): json.loads(line)["answer"].rsplit("####", 1)[1].strip()
            for line in (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()}
    pb = json.loads((shared_data / "processbench" / "gsm8k.json").read_text())
    agree = sum(grade("\n\n".join(r["steps"]), gold[r["problem"].strip()])[1] == r["final_answer_correct"]
                for r in pb)
    assert agree / len(pb) >= 0.98, agree
    bon = [json.loads(line) for line in (shared_data / "math" / "math_bon8_50.jsonl").read_text().splitlines()]
    pairs = [(grade(resp, str(r["answer"]))[1], flag) for r in bon
             for resp, flag in zip(r["response"], r["score"], strict=True)]
    assert all(ours == theirs for ours, theirs in pairs)
