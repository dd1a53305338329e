"""World generator and step oracle: hand-written right and wrong solutions of every error kind."""

from __future__ import annotations

import json

import pytest

from prmforge.world import (
    STEP_SEPARATOR,
    extract_answer,
    generate_problems,
    heldout_bucket,
    oracle_first_error,
    problem_from_meta,
    prompt_for,
)

# Mia has 5 apples; +3, -2, x2, then +4 (a distractor 7 sits before event 1).
META = {
    "name": "Mia", "item": "apples", "start": 5,
    "ops": [["+", 3], ["-", 2], ["x", 2], ["+", 4]],
    "templates": [0, 0, 0, 0],
    "distractors": [[7, 1]], "distractor_templates": [0],
    "other": "Leo", "other_item": "coins",
}


@pytest.fixture
def problem():
    return problem_from_meta(dict(META))


def test_gold_rendering(problem):
    assert problem.answer == "16"
    assert "Leo has 7 apples." in problem.problem
    assert problem.steps[0] == "Mia buys 3 more: 5 + 3 = 8."
    assert problem.steps[-1].endswith("The answer is 16.")
    assert extract_answer(problem.solution_text()) == "16"
    assert oracle_first_error(problem, problem.steps).first_error == -1


@pytest.mark.parametrize(
    ("steps", "index", "kind", "detail"),
    [
        # arithmetic: well-formed valid move, wrong result
        (["5 + 3 = 9.", "9 - 2 = 7."], 0, "arithmetic", None),
        (["5 + 3 = 8.", "8 - 2 = 6.", "6 x 2 = 13.", "13 + 4 = 17. The answer is 17."], 2, "arithmetic", None),
        # logic: wrong operation
        (["5 + 3 = 8.", "8 + 2 = 10."], 1, "logic", "wrong operation"),
        # logic: distractor used
        (["5 + 7 = 12."], 0, "logic", "distractor used"),
        # logic: wrong operand (a number not in the problem)
        (["5 + 3 = 8.", "8 - 5 = 3."], 1, "logic", "wrong operand"),
        # logic: step skipped (x2 applied before the -2 of the other class... then +4 before x2)
        (["5 + 3 = 8.", "8 - 2 = 6.", "6 + 4 = 10."], 2, "logic", "step skipped"),
        # logic: wrong current value (does not build on the last result)
        (["5 + 3 = 8.", "5 - 2 = 3."], 1, "logic", "wrong current value"),
        # logic: answer claimed early, or different from the result
        (["5 + 3 = 8. The answer is 8."], 0, "logic", None),
        (["5 + 3 = 8.", "8 - 2 = 6.", "6 x 2 = 12.", "12 + 4 = 16. The answer is 15."], 3, "logic", None),
        # logic: stopped early
        (["5 + 3 = 8.", "8 - 2 = 6."], 1, "logic", "stopped early"),
        # format: no equation
        (["Mia is happy.", "5 + 3 = 8."], 0, "format", None),
        (["5 + 3 = 8.", "then something"], 1, "format", None),
        ([], 0, "format", None),
    ],
)
def test_wrong_solutions(problem, steps, index, kind, detail):
    v = oracle_first_error(problem, steps)
    assert (v.first_error, v.kind) == (index, kind), v
    if detail:
        assert detail in v.detail


@pytest.mark.parametrize(
    "steps",
    [
        # reordered within the additive block, and operands of + swapped
        ["5 - 2 = 3.", "3 + 3 = 6.", "6 x 2 = 12.", "4 + 12 = 16.", "The answer is 16."],
        # other multiplication sign, answer in its own step, #### convention
        ["5 + 3 = 8", "8 - 2 = 6", "6 * 2 = 12", "12 + 4 = 16", "#### 16"],
        # two equations in one step
        ["5 + 3 = 8 and 8 - 2 = 6.", "6 × 2 = 12.", "12 + 4 = 16. The answer is 16."],
    ],
)
def test_correct_variants_accepted(problem, steps):
    assert oracle_first_error(problem, steps).first_error == -1


def test_oracle_accepts_meta_forms(problem):
    wrong = ["5 + 3 = 9."]
    row = {"problem_id": problem.problem_id, "meta": json.dumps(problem.meta)}
    for form in (problem.meta, row, json.dumps(problem.meta)):
        assert oracle_first_error(form, wrong).kind == "arithmetic"
    with pytest.raises(ValueError):
        oracle_first_error({"foo": 1}, wrong)


@pytest.mark.parametrize("difficulty", ["easy", "standard", "hard"])
def test_generator_deterministic_and_valid(difficulty):
    a = generate_problems(40, seed=3, difficulty=difficulty)
    b = generate_problems(40, seed=3, difficulty=difficulty)
    assert [p.problem for p in a] == [p.problem for p in b]
    assert [p.problem for p in a] != [p.problem for p in generate_problems(40, seed=4, difficulty=difficulty)]
    assert len({p.problem_id for p in a}) == 40
    for p in a:
        assert 2 <= len(p.steps) <= 6
        json.dumps(p.meta)
        rebuilt = problem_from_meta(json.loads(json.dumps(p.meta)))
        assert (rebuilt.problem, rebuilt.steps, rebuilt.answer) == (p.problem, p.steps, p.answer)
        assert oracle_first_error(p.meta, p.steps).first_error == -1
        assert STEP_SEPARATOR not in "".join(p.steps)


def test_distractors_present_and_splits_disjoint():
    train = generate_problems(300, seed=0, difficulty="standard")
    held = generate_problems(100, seed=0, difficulty="standard", split="heldout")
    assert any(p.meta["distractors"] for p in train)
    assert not {p.problem for p in train} & {p.problem for p in held}
    assert all(heldout_bucket(p.problem) == "heldout" for p in held)
    assert all(heldout_bucket(p.problem) == "train" for p in train)


def test_prompt_and_bad_args():
    assert prompt_for(" x ").startswith("Problem: x\n")
    assert "Answer:" not in prompt_for("x")
    with pytest.raises(ValueError):
        generate_problems(1, 0, "impossible")
    with pytest.raises(ValueError):
        generate_problems(1, 0, "easy", split="test")
