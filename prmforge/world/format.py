"""Text conventions shared by the world, the policy and the rollouts stage.

The policy is trained on exactly these strings and sampled with
:func:`prompt_for`, so a rollout extractor that knows ``The answer is X``
finds the final answer in policy output without world-specific code.
"""

from __future__ import annotations

import re

# Steps of a generated solution are separated by a newline, one step a line.
STEP_SEPARATOR = "\n"

# The prompt ends with "Solution:" (not "Answer:") so an extractor looking for
# "Answer:" in the completion never matches the prompt scaffold.
_PROMPT_TEMPLATE = "Problem: {problem}\nSolution:\n"

_ANSWER_PATTERNS = (
    re.compile(r"[Tt]he (?:final )?answer is[:\s]*\$?\s*(-?\d[\d,]*(?:\.\d+)?)"),
    re.compile(r"####\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)"),
    re.compile(r"\\boxed\{\s*(-?\d[\d,]*(?:\.\d+)?)\s*\}"),
    re.compile(r"Answer:\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)"),
)


def prompt_for(problem_text: str) -> str:
    """The prompt the policy is trained on and sampled with for ``problem_text``."""
    return _PROMPT_TEMPLATE.format(problem=problem_text.strip())


def final_answer_line(answer: str | int) -> str:
    """The sentence that closes the last step of every gold solution."""
    return f"The answer is {answer}."


def extract_answer(text: str) -> str | None:
    """The last stated final answer in ``text`` (any supported convention), else None.

    The last match wins because a solution may restate intermediate claims
    before its conclusion. Thousands separators are dropped.
    """
    best: tuple[int, str] | None = None
    for pat in _ANSWER_PATTERNS:
        for m in pat.finditer(text):
            if best is None or m.start() >= best[0]:
                best = (m.start(), m.group(1).replace(",", ""))
    return None if best is None else best[1]


def split_steps(text: str) -> list[str]:
    """Split a solution into its non-empty steps (one per line)."""
    return [s.strip() for s in text.split(STEP_SEPARATOR) if s.strip()]
