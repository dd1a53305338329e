"""Monte Carlo step labels: how likely is each step prefix to still reach the gold answer?

For a rollout with steps ``s_0 .. s_{n-1}``, the value of prefix ``i`` is
``v(i) = P(policy reaches the gold answer | prompt + s_0 .. s_i)``. It is
estimated with K completions sampled from the prefix (one ``generate`` call
with ``n=K`` per batch of prefixes, so the K samples share the prefix's KV /
prefix cache). soft = share of the K completions whose final answer is
correct; hard = soft > 0. The MC first error is the first step whose hard
value is 0; steps before it are labelled positive, it is labelled negative,
and later steps are dropped (their labels would be meaningless).

What is known for free (no sampling), and why
---------------------------------------------
* **The last prefix.** Prefix ``n-1`` is the whole solution: its final answer
  is already written, so its value is 1 if the rollout's answer is correct and
  0 if not (``final_correct`` from the rollouts stage). It is never sampled,
  except for a rollout cut off by ``max_tokens`` (``final_known=False``): its
  last step may be unfinished, so its last prefix is probed like any other.
* **Monotonicity of the true value.** The rollout itself was sampled from the
  same policy, so every longer prefix is a possible continuation of every
  shorter one. If ``v(i) = 0`` exactly, no continuation of prefix ``i`` reaches
  the answer, so ``v(j) = 0`` for all ``j > i``; equivalently ``v(j) > 0``
  implies ``v(i) > 0`` for all ``i < j``. Hence:

  - a **correct** rollout has ``v(n-1) = 1 > 0``, so every prefix has a
    positive true value: its first error is -1 with **zero** probes;
  - a **wrong** rollout has ``v(n-1) = 0``, so its first error lies in
    ``0..n-1`` and is the boundary of a monotone predicate: binary search
    finds it in ``ceil(log2 n)`` probes (``n = 1`` needs none).

  The estimate from K samples is not monotone (a prefix with small true value
  can draw 0 correct of K), which is where ``per_step`` and
  ``binary_search`` can disagree; the cost benchmark measures how often.

Modes
-----
* ``per_step`` (Math-Shepherd): probe every prefix ``0..n-2`` (the last is
  free), first error = first hard 0, else ``n-1`` for a wrong rollout or -1
  for a correct one. Soft values of every step are recorded.
* ``binary_search`` (OmegaPRM): as above, probing O(log n) prefixes of wrong
  rollouts and none of correct ones. All rollouts of a shard advance one
  probe per round, and each round's probes go to the engine together.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from prmforge.engines.base import PROMPT_TOO_LONG, Engine, SamplingParams

MODES = ("per_step", "binary_search")

OK = "ok"
ERROR = "error"  # every completion of some probe failed in the engine
EMPTY = "empty"  # a rollout without steps cannot be labelled
SKIPPED = "skipped"  # the rollout's prompt never ran (e.g. longer than the model's context): detail says why


@dataclass(frozen=True)
class MCItem:
    """One rollout to label."""

    rollout_id: str
    prompt: str
    steps: list[str]
    gold: str
    final_correct: bool
    final_known: bool = True  # False for a rollout cut off by max_tokens: its last prefix is not free
    text: str | None = None  # the raw completion the steps were split from (exact prefixes)
    skip_reason: str | None = None  # the rollouts stage skipped this prompt: labelled "skipped", never probed


@dataclass(frozen=True)
class ProbeResult:
    """The MC estimate of one prefix."""

    soft: float | None  # None: every completion failed
    completions: int
    generated_tokens: int
    prompt_tokens: int
    failed: int = 0
    too_long: bool = False  # failed because the prefix does not fit the model's context (not an engine fault)


@dataclass
class MCResult:
    """Everything recorded for one rollout."""

    rollout_id: str
    first_error: int
    labels: list[bool]
    probe_steps: list[int] = field(default_factory=list)
    probe_soft: list[float] = field(default_factory=list)
    probe_hard: list[bool] = field(default_factory=list)
    completions: int = 0
    generated_tokens: int = 0
    prompt_tokens: int = 0
    rounds: int = 0
    status: str = OK
    detail: str = ""


def labels_for(first_error: int, n_steps: int) -> list[bool]:
    """Positive before the first error, negative at it, nothing after; all positive if -1."""
    if first_error < 0:
        return [True] * n_steps
    return [True] * first_error + [False]


# ---------------------------------------------------------------------------
# search logic (pure: driven by hard values, testable without a model)
# ---------------------------------------------------------------------------
class PerStepSearch:
    """Probe every prefix but the last (whose value is free unless the rollout was truncated)."""

    def __init__(self, n_steps: int, final_correct: bool, final_known: bool = True) -> None:
        self.n = n_steps
        self.final_correct = final_correct
        self.final_known = final_known
        self.hard: dict[int, bool] = {}
        self._asked = False

    @property
    def _probed(self) -> range:
        return range(self.n - 1) if self.final_known else range(self.n)

    def next_probes(self) -> list[int]:
        if self._asked:
            return []
        self._asked = True
        return list(self._probed)

    def observe(self, step: int, hard: bool) -> None:
        self.hard[step] = hard

    @property
    def done(self) -> bool:
        return self._asked and all(i in self.hard for i in self._probed)

    @property
    def first_error(self) -> int:
        for i in self._probed:
            if not self.hard[i]:
                return i
        if not self.final_known:
            return -1
        return -1 if self.final_correct else self.n - 1


class BinarySearch:
    """Find the first prefix with value 0, assuming the value is monotone (see module doc).

    Invariant: every step ``< lo`` is known positive, step ``hi`` is known
    zero (``hi = n-1`` for free on a wrong rollout). A truncated rollout
    (``final_known=False``) first probes its last prefix: > 0 means every
    prefix is positive (first error -1), 0 starts the usual search.
    """

    def __init__(self, n_steps: int, final_correct: bool, final_known: bool = True) -> None:
        self.n = n_steps
        self.final_correct = final_correct and final_known
        self.lo = 0
        self.hi = n_steps - 1
        self.last_pending = not final_known and n_steps > 0
        self.all_positive = False
        self.hard: dict[int, bool] = {}

    def next_probes(self) -> list[int]:
        if self.done:
            return []
        if self.last_pending:
            return [self.n - 1]
        return [(self.lo + self.hi) // 2]

    def observe(self, step: int, hard: bool) -> None:
        self.hard[step] = hard
        if self.last_pending and step == self.n - 1:
            self.last_pending = False
            self.all_positive = hard
            return
        if hard:
            self.lo = step + 1
        else:
            self.hi = step

    @property
    def done(self) -> bool:
        if self.final_correct or self.n == 0 or self.all_positive:
            return True
        return not self.last_pending and self.lo >= self.hi

    @property
    def first_error(self) -> int:
        return -1 if (self.final_correct or self.all_positive) else self.hi


def make_search(mode: str, n_steps: int, final_correct: bool,
                final_known: bool = True) -> PerStepSearch | BinarySearch:
    if mode == "per_step":
        return PerStepSearch(n_steps, final_correct, final_known)
    if mode == "binary_search":
        return BinarySearch(n_steps, final_correct, final_known)
    raise ValueError(f"unknown MC mode {mode!r}; known: {MODES}")


def max_binary_probes(n_steps: int) -> int:
    """Worst-case probes of a wrong rollout: ``ceil(log2 n)``."""
    return math.ceil(math.log2(n_steps)) if n_steps > 1 else 0


ValueFn = Callable[[list[tuple[MCItem, int]]], list[ProbeResult]]


def run_search(items: Sequence[MCItem], mode: str, value_fn: ValueFn, max_rounds: int = 64) -> list[MCResult]:
    """Label ``items``: every round gathers all pending probes of all rollouts into one ``value_fn`` call."""
    searches = []
    results: list[MCResult] = []
    for item in items:
        n = len(item.steps)
        results.append(MCResult(item.rollout_id, -1, []))
        if item.skip_reason:
            results[-1].status, results[-1].detail = SKIPPED, item.skip_reason
            searches.append(None)
        elif n == 0:
            results[-1].status, results[-1].detail = EMPTY, "rollout has no steps"
            searches.append(None)
        else:
            searches.append(make_search(mode, n, item.final_correct, item.final_known))
    for _ in range(max_rounds):
        batch: list[tuple[int, int]] = []
        for idx, s in enumerate(searches):
            if s is not None and results[idx].status == OK and not s.done:
                batch.extend((idx, step) for step in s.next_probes())
        if not batch:
            break
        probes = value_fn([(items[idx], step) for idx, step in batch])
        touched = set()
        for (idx, step), pr in zip(batch, probes, strict=True):
            r = results[idx]
            touched.add(idx)
            r.completions += pr.completions
            r.generated_tokens += pr.generated_tokens
            r.prompt_tokens += pr.prompt_tokens
            if pr.soft is None and pr.too_long:
                if r.status == OK:  # a counted reason, like a prompt the rollouts stage skipped
                    r.status, r.detail = SKIPPED, f"the prefix up to step {step} is longer than the model's context"
                continue
            if pr.soft is None:
                r.status, r.detail = ERROR, f"all {pr.failed} completions of prefix {step} failed in the engine"
                continue
            if r.status != OK:
                continue
            hard = pr.soft > 0
            r.probe_steps.append(step)
            r.probe_soft.append(pr.soft)
            r.probe_hard.append(hard)
            searches[idx].observe(step, hard)
        for idx in touched:
            results[idx].rounds += 1
    for item, s, r in zip(items, searches, results, strict=True):
        if s is None or r.status != OK:
            r.first_error, r.labels = -1, []
            continue
        if not s.done:
            r.status, r.detail = ERROR, f"search did not finish in {max_rounds} rounds"
            r.labels = []
            continue
        r.first_error = s.first_error
        r.labels = labels_for(r.first_error, len(item.steps))
    return results


# ---------------------------------------------------------------------------
# the engine-backed value function
# ---------------------------------------------------------------------------
def step_offsets(text: str, steps: Sequence[str]) -> list[int] | None:
    """Start offset of every step in ``text`` (steps are stripped substrings, in order), else None."""
    out, cursor = [], 0
    for step in steps:
        pos = text.find(step, cursor)
        if pos < 0:
            return None
        out.append(pos)
        cursor = pos + len(step)
    return out


def prefix_prompt(item: MCItem, step: int, separator: str) -> str:
    """The policy's own text up to the start of step ``step+1``: it continues from there.

    With the raw completion (``item.text``) the prefix is cut from it, so the
    whitespace between steps is exactly what the policy wrote and no
    separator setting can drift from the rollouts stage's; otherwise the
    steps are joined with ``separator`` and one is appended.
    """
    if item.text is not None:
        offsets = step_offsets(item.text, item.steps)
        if offsets is not None:
            end = offsets[step + 1] if step + 1 < len(item.steps) else len(item.text)
            return item.prompt + item.text[:end]
    return item.prompt + separator.join(item.steps[: step + 1]) + separator


Grader = Callable[[str, str], bool]


@dataclass
class EngineValue:
    """Estimate prefix values with K completions each through an :class:`Engine`.

    Probes are sent ``batch_prefixes`` prompts per ``generate`` call with
    ``n=k``, so each prompt's KV is shared by its K samples. The seed is the
    same for every call: engines with counter-based sampling (``hf``) then
    give a prefix the same K completions whatever batch or mode asks for it.
    """

    engine: Engine
    grade: Grader
    k: int = 8
    max_tokens: int = 192
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    separator: str = "\n"
    batch_prefixes: int = 64
    calls: int = 0
    last_error: str | None = None

    min_tokens: int = 32
    retried: int = 0

    def __call__(self, probes: list[tuple[MCItem, int]]) -> list[ProbeResult]:
        out: list[ProbeResult] = []
        for start in range(0, len(probes), self.batch_prefixes):
            out.extend(self._estimate(probes[start : start + self.batch_prefixes], self.max_tokens))
        return out

    def _estimate(self, chunk: list[tuple[MCItem, int]], max_tokens: int) -> list[ProbeResult]:
        """One engine call; probes whose every completion failed are retried once per halved budget.

        Why: a long prefix leaves less room in the model's context, and
        engines refuse ``prompt + max_tokens`` beyond it. The completion of a
        longer prefix also needs fewer tokens, so a smaller budget (down to
        ``min_tokens``) is a fair estimate; a completion that runs out of
        budget simply counts as not reaching the answer. Probes that still
        fail stay failed (recorded as an ``error`` rollout, never guessed).
        """
        params = SamplingParams(n=self.k, temperature=self.temperature, top_p=self.top_p,
                                max_tokens=max_tokens, seed=self.seed)
        prompts = [prefix_prompt(item, step, self.separator) for item, step in chunk]
        try:
            comps = self.engine.generate(prompts, params)
            self.calls += 1
        except Exception as exc:  # noqa: BLE001 - an outage fails these probes, recorded
            self.last_error = f"{type(exc).__name__}: {exc}"[:200]
            comps = [[] for _ in chunk]
        out: list[ProbeResult | None] = []
        retry: list[int] = []
        too_long: set[int] = set()
        for i, ((item, _), cs) in enumerate(zip(chunk, comps, strict=True)):
            good = [c for c in cs if c.finish_reason != "error" and c.error is None]
            if not good:
                retry.append(i)
                out.append(None)
                if cs and all((c.error or "").startswith(PROMPT_TOO_LONG) for c in cs):
                    too_long.add(i)
                continue
            correct = sum(1 for c in good if self.grade(c.text, item.gold))
            out.append(ProbeResult(soft=correct / len(good), completions=len(cs),
                                   generated_tokens=sum(c.completion_tokens for c in cs),
                                   prompt_tokens=sum(c.prompt_tokens for c in cs[:1]), failed=len(cs) - len(good)))
        if retry and max_tokens // 2 >= self.min_tokens:
            self.retried += len(retry)
            again = self._estimate([chunk[i] for i in retry], max_tokens // 2)
            for i, r in zip(retry, again, strict=True):
                out[i] = r
        return [r if r is not None else ProbeResult(None, 0, 0, 0, failed=self.k, too_long=i in too_long)
                for i, r in enumerate(out)]


def default_grader() -> Grader:
    """Answer extraction and grading of the rollouts stage (``prmforge.answers.grade``).

    A completion is graded on its own text: it holds the remaining steps and
    the final answer, while the prefix never states a final answer (the last
    prefix, which does, is never sampled).
    """
    from prmforge.answers import grade

    def _grade(text: str, gold: str) -> bool:
        return bool(grade(text, gold)[1])

    return _grade
