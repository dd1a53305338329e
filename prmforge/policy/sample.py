"""Sample the policy and judge each sample with the oracle.

Used by calibration and by the held-out world benchmark. Sampling goes
through the rollouts stage's ``HFEngine`` (KV-cached batches, EOS stops a
row, no top-k so temperature 1.0 is the model's own distribution), so the
calibration describes the samples the pipeline will actually label.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prmforge.engines.base import Engine, SamplingParams
from prmforge.world import (
    WorldProblem,
    extract_answer,
    oracle_first_error,
    split_steps,
)


@dataclass
class JudgedSample:
    """One policy solution of one world problem with the oracle's verdict."""

    problem: WorldProblem
    text: str
    steps: list[str]
    first_error: int
    kind: str | None
    detail: str | None
    predicted: str | None
    final_answer_correct: bool
    finish_reason: str


def policy_engine(path: str | Path, batch_size: int = 64, num_threads: int | None = None) -> Engine:
    """The rollouts stage's ``HFEngine`` on the CPU, so calibration sees what rollouts see."""
    from prmforge.engines.hf import HFEngine

    return HFEngine(str(path), device="cpu", dtype="float32", batch_size=batch_size,
                    trust_remote_code=False, num_threads=num_threads)


def sample_and_judge(engine: Engine, problems: list[WorldProblem], prompt: Callable[[str], str],
                     n_per_problem: int = 1, temperature: float = 1.0, max_new_tokens: int = 160,
                     seed: int = 0) -> list[JudgedSample]:
    """Sample ``n_per_problem`` solutions per problem and judge every one.

    ``prompt`` builds the policy's prompt (``prmforge.prompts.policy_prompt(path)``:
    the world prompt in the policy's chat template). The engine's counter-based
    sampling makes each sample a function of (seed, prompt, sample index) only,
    not of batch size or order.
    """
    params = SamplingParams(n=n_per_problem, temperature=temperature, top_p=1.0,
                            max_tokens=max_new_tokens, seed=seed)
    completions = engine.generate([prompt(p.problem) for p in problems], params)
    out = []
    for p, comps in zip(problems, completions, strict=True):
        for c in comps:
            steps = split_steps(c.text)
            verdict = oracle_first_error(p, steps)
            predicted = extract_answer(c.text)
            out.append(JudgedSample(
                problem=p, text=c.text, steps=steps, first_error=verdict.first_error, kind=verdict.kind,
                detail=verdict.detail, predicted=predicted, final_answer_correct=predicted == p.answer,
                finish_reason=c.finish_reason,
            ))
    return out
