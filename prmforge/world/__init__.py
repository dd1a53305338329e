"""The built-in arithmetic world: problem generator, text conventions and step oracle.

Public contract (other stages code against it)::

    generate_problems(n, seed, difficulty="standard", split="train") -> list[WorldProblem]
    oracle_first_error(problem_or_meta, steps) -> OracleVerdict(first_error, kind, detail)
    STEP_SEPARATOR, prompt_for(problem_text), final_answer_line(answer), extract_answer(text)
"""

from prmforge.world.format import STEP_SEPARATOR, extract_answer, final_answer_line, prompt_for, split_steps
from prmforge.world.generator import (
    DIFFICULTIES,
    WORLD_VERSION,
    WorldProblem,
    generate_problems,
    heldout_bucket,
    meta_json,
    problem_from_meta,
)
from prmforge.world.oracle import OracleVerdict, oracle_first_error

__all__ = [
    "DIFFICULTIES",
    "STEP_SEPARATOR",
    "WORLD_VERSION",
    "OracleVerdict",
    "WorldProblem",
    "extract_answer",
    "final_answer_line",
    "generate_problems",
    "heldout_bucket",
    "meta_json",
    "oracle_first_error",
    "problem_from_meta",
    "prompt_for",
    "split_steps",
]
