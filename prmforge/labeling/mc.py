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

Strategies (either mode, combinable)
------------------------------------
* ``reuse`` (OmegaPRM's reuse of rollouts): the rollouts of one problem (same
  prompt) and the completions sampled from their prefixes are one tree of
  step sequences (:class:`Evidence`). A prefix is *proven* positive, with no
  sampling, when a correct solution passes through it: a correct sibling
  rollout that shares it, or a correct completion sampled from it or from an
  ancestor whose steps continue through it (the completion's text is split
  into steps with the step separator). That is exact, not an estimate: one
  correct continuation means the true value is > 0. A prefix shared by
  several rollouts (the same steps) is sampled once and its estimate shared.
  Without proofs, reuse and the plain search see the same estimates and give
  the same labels; a proof can only turn a sampled 0 (a finite-K miss) into
  the positive it provably is.
* ``adaptive`` (:class:`AdaptiveValue`): a prefix is sampled in waves (``2``,
  then doubling, up to ``k`` in all) and sampling stops at its first correct
  completion. The hard label is the K-sample test's (``soft > 0``) with the
  same error rate: a prefix of true value ``v`` is called 0 with probability
  ``(1 - v)^k`` (<= 0.10 for ``v >= 0.25`` at ``k = 8``); the test is only
  curtailed once its outcome is decided, so positive prefixes cost about
  ``1/v`` samples instead of ``k`` and the undecided ones get all ``k``. With
  the ``hf`` engine the waves are samples ``0..k-1`` of the same sequence
  (``SamplingParams.sample_offset``), so the decision equals the fixed-K one
  on the same completions. Soft values are then ``correct / drawn``, which
  overstates a value (sampling stopped at a success): use fixed K for soft
  labels.
* ``verify`` (:class:`VerifiedSearch`): return ``per_step``'s first error,
  not an estimate of it. Binary search assumes the sampled values are
  monotone; they are not (a prefix of small value can draw 0 of K below one
  that drew a success), and ``per_step`` labels the *first* such zero. So
  after binary search, every prefix it only inferred positive is probed in
  ascending order until the first zero, and on a rollout whose answer is
  correct ``per_step``'s prefixes are scanned the same way (with
  ``adaptive`` a high-value prefix costs about one sample). Where a prefix
  gets the same samples in every mode (common random numbers: the ``hf``
  engine, one seed), the first error is ``per_step``'s exactly. With
  ``mode: per_step`` it is the bare ascending scan, which stops at the first
  zero instead of probing every prefix.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from prmforge.engines.base import PROMPT_TOO_LONG, Engine, SamplingParams
from prmforge.steps import split_steps

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
    correct_texts: tuple[str, ...] = ()  # the correct completions: evidence for other prefixes (reuse)


@dataclass
class MCResult:
    """Everything recorded for one rollout."""

    rollout_id: str
    first_error: int
    labels: list[bool]
    probe_steps: list[int] = field(default_factory=list)
    probe_soft: list[float] = field(default_factory=list)
    probe_hard: list[bool] = field(default_factory=list)
    probe_k: list[int] = field(default_factory=list)  # completions each probe's value rests on (failed ones excluded)
    completions: int = 0
    generated_tokens: int = 0
    prompt_tokens: int = 0
    rounds: int = 0
    status: str = OK
    detail: str = ""
    free_positive: int = 0  # reuse: prefixes proven positive by a correct solution through them, never sampled
    shared_probes: int = 0  # reuse: probes answered by another rollout's estimate of the same prefix


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
        return [i for i in self._probed if i not in self.hard]

    def observe(self, step: int, hard: bool) -> None:
        self.hard[step] = hard

    def known_positive(self, step: int) -> None:
        """Prefixes ``0..step`` are proven positive (reuse): never probed, and a sampled 0 there is overruled."""
        for i in self._probed:
            if i <= step:
                self.hard[i] = True

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
    zero (``hi = n-1`` for free on a wrong rollout). Both follow from the
    observations: ``lo`` is one past the last positive, ``hi`` the first zero
    at or after ``lo`` (a zero before a proven positive is a finite-K miss and
    no longer counts). A truncated rollout (``final_known=False``) first
    probes its last prefix: > 0 means every prefix is positive (first error
    -1), 0 starts the usual search.
    """

    def __init__(self, n_steps: int, final_correct: bool, final_known: bool = True) -> None:
        self.n = n_steps
        self.final_correct = final_correct and final_known
        self.last_pending = not final_known and n_steps > 0
        self.all_positive = False
        self.hard: dict[int, bool] = {}

    @property
    def lo(self) -> int:
        return max((s + 1 for s, h in self.hard.items() if h), default=0)

    @property
    def hi(self) -> int:
        lo = self.lo
        return min((s for s, h in self.hard.items() if not h and s >= lo), default=self.n - 1)

    def next_probes(self) -> list[int]:
        if self.done:
            return []
        if self.last_pending:
            return [self.n - 1]
        return [(self.lo + self.hi) // 2]

    def observe(self, step: int, hard: bool) -> None:
        if self.last_pending and step == self.n - 1:
            self.last_pending = False
            self.all_positive = hard
            return
        self.hard[step] = hard

    def known_positive(self, step: int) -> None:
        """Prefixes ``0..step`` are proven positive (reuse): the search continues above ``step``."""
        if step >= self.n - 1 and self.n > 0:
            self.last_pending, self.all_positive = False, True
            return
        if step >= 0:
            self.hard[step] = True

    @property
    def done(self) -> bool:
        if self.final_correct or self.n == 0 or self.all_positive:
            return True
        return not self.last_pending and self.lo >= self.hi

    @property
    def first_error(self) -> int:
        return -1 if (self.final_correct or self.all_positive) else self.hi


class VerifiedSearch:
    """``per_step``'s first error, found by probing prefixes in ascending order only until its first zero.

    ``per_step``'s verdict is the first prefix (of those it probes) whose own
    K samples hold no correct completion. This search returns the same
    prefix, probing only what that verdict depends on: after an optional
    binary-search phase (which fills in some observations cheaply; its
    ``hi`` is an observed zero or the free last step), it scans
    ``per_step``'s probe range from 0 upwards, one prefix per round, using a
    prefix's own observation where there is one and probing it otherwise,
    and stops at the first observed zero. Prefixes binary search only
    *inferred* positive (below an observed positive, or proven by reuse) are
    probed. With common random numbers (a prefix gets the same samples in
    any mode: the ``hf`` engine, one seed) the first error equals
    ``per_step``'s exactly. Reuse proofs may steer the binary phase but never
    stand in for an observation: a proof is about the true value, while the
    verdict is about these K samples.

    Without the binary phase (``binary_first=False``) it is the bare ascending
    scan; the binary phase never lowers the cost of the scan (its probes below
    the verdict are ones the scan makes anyway, those above are extra) and is
    kept so the cost benchmark can show what it adds.
    """

    def __init__(self, n_steps: int, final_correct: bool, final_known: bool = True,
                 binary_first: bool = True) -> None:
        self.probed = range(n_steps - 1) if final_known else range(n_steps)  # per_step's probes
        self.last_value = final_correct or not final_known  # per_step's verdict when no probe is 0
        self.n = n_steps
        self.binary = BinarySearch(n_steps, final_correct, final_known) if binary_first else None
        self.seen: dict[int, bool] = {}  # observations only, never proofs

    def _searching(self) -> BinarySearch | None:
        """The binary phase while it runs, else None (the scan runs)."""
        return self.binary if self.binary is not None and not self.binary.done else None

    def next_probes(self) -> list[int]:
        if (binary := self._searching()) is not None:
            return binary.next_probes()
        for i in self.probed:
            if i not in self.seen:
                return [i]
            if not self.seen[i]:
                return []
        return []

    def observe(self, step: int, hard: bool) -> None:
        self.seen[step] = hard
        if (binary := self._searching()) is not None:
            binary.observe(step, hard)

    def known_positive(self, step: int) -> None:
        """A reuse proof steers the binary phase only; the scan still samples the prefix (class doc)."""
        if (binary := self._searching()) is not None:
            binary.known_positive(step)

    @property
    def done(self) -> bool:
        return self._searching() is None and not self.next_probes()

    @property
    def first_error(self) -> int:
        for i in self.probed:
            if not self.seen[i]:
                return i
        return -1 if self.last_value else self.n - 1


def make_search(mode: str, n_steps: int, final_correct: bool, final_known: bool = True,
                verify: bool = False) -> PerStepSearch | BinarySearch | VerifiedSearch:
    """The search of ``mode``; with ``verify`` the :class:`VerifiedSearch` that returns ``per_step``'s verdict."""
    if mode not in MODES:
        raise ValueError(f"unknown MC mode {mode!r}; known: {MODES}")
    if verify:
        return VerifiedSearch(n_steps, final_correct, final_known, binary_first=mode == "binary_search")
    if mode == "per_step":
        return PerStepSearch(n_steps, final_correct, final_known)
    return BinarySearch(n_steps, final_correct, final_known)


def max_binary_probes(n_steps: int) -> int:
    """Worst-case probes of a wrong rollout: ``ceil(log2 n)``."""
    return math.ceil(math.log2(n_steps)) if n_steps > 1 else 0


ValueFn = Callable[[list[tuple[MCItem, int]]], list[ProbeResult]]
NodeKey = tuple[str, tuple[str, ...]]


class Evidence:
    """The tree of step sequences of one shard's rollouts, and which of its prefixes are proven positive.

    A node is ``(prompt, steps[:i+1])`` of some rollout: rollouts of the same
    problem that wrote the same first steps share their nodes. A node is
    proven when a correct solution passes through it (the module doc says
    why that is exact); proofs come from correct rollouts (whose final answer
    is known) and from the correct completions of probes (:meth:`record`).
    Estimates of sampled nodes are kept so a node is sampled once.
    """

    def __init__(self, items: Sequence[MCItem], separator: str) -> None:
        self.separator = separator
        self.nodes: set[NodeKey] = set()
        self.proven: set[NodeKey] = set()
        self.estimates: dict[NodeKey, ProbeResult] = {}
        for item in items:
            if item.skip_reason:
                continue
            for i in range(len(item.steps)):
                self.nodes.add(self.key(item, i))
        for item in items:
            if not item.skip_reason and item.final_correct and item.final_known:
                self._prove(item.prompt, item.steps)

    @staticmethod
    def key(item: MCItem, step: int) -> NodeKey:
        return item.prompt, tuple(item.steps[: step + 1])

    def _prove(self, prompt: str, steps: Sequence[str]) -> None:
        for i in range(len(steps)):
            node = (prompt, tuple(steps[: i + 1]))
            if node not in self.nodes:
                return  # the solution leaves the tree: no rollout prefix further down is on its path
            self.proven.add(node)

    def deepest_proven(self, item: MCItem) -> int:
        """The last step of ``item`` whose prefix is proven (proofs are prefix-closed), or -1."""
        last = -1
        for i in range(len(item.steps)):
            if self.key(item, i) not in self.proven:
                break
            last = i
        return last

    def record(self, item: MCItem, step: int, result: ProbeResult) -> None:
        """Keep the estimate of ``item``'s prefix ``step`` and prove every node its correct completions pass."""
        self.estimates[self.key(item, step)] = result
        for text in result.correct_texts:
            self._prove(item.prompt, [*item.steps[: step + 1], *split_steps(text, self.separator)])


def run_search(items: Sequence[MCItem], mode: str, value_fn: ValueFn, max_rounds: int = 64,
               reuse: bool = False, separator: str = "\n", verify: bool = False) -> list[MCResult]:
    """Label ``items``: every round gathers all pending probes of all rollouts into one ``value_fn`` call.

    ``reuse`` shares evidence between the rollouts of ``items`` (see the
    module doc and :class:`Evidence`); ``separator`` splits completions into
    steps for it. A shared probe's cost is counted once, on the rollout that
    asked first. ``verify`` returns ``per_step``'s first error
    (:class:`VerifiedSearch`); with ``reuse`` it then only shares estimates
    of the same prefix (the same samples) and lets proofs steer the binary
    phase, so no prefix is labelled by a proof (``free_positive`` stays 0).
    """
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
            searches.append(make_search(mode, n, item.final_correct, item.final_known, verify))
    evidence = Evidence(items, separator) if reuse else None
    applied = [-1] * len(items)
    for _ in range(max_rounds):
        if evidence is not None:
            _apply_proofs(items, searches, results, evidence, applied)
        batch: list[tuple[int, int]] = []
        for idx, s in enumerate(searches):
            if s is not None and results[idx].status == OK and not s.done:
                batch.extend((idx, step) for step in s.next_probes())
        if not batch:
            break
        # with reuse, a node already estimated is answered from its estimate and a node asked by
        # several rollouts this round is sampled once; its cost is counted on the first asker
        ask, known = batch, {}
        if evidence is not None:
            ask, seen = [], set()
            for idx, step in batch:
                node = evidence.key(items[idx], step)
                if node in evidence.estimates:
                    known[node] = evidence.estimates[node]
                elif node not in seen:
                    seen.add(node)
                    ask.append((idx, step))
        paid = {}
        if ask:
            for (idx, step), pr in zip(ask, value_fn([(items[idx], step) for idx, step in ask]), strict=True):
                paid[idx, step] = pr
                if evidence is not None:
                    known[evidence.key(items[idx], step)] = pr
                    if pr.soft is not None:
                        evidence.record(items[idx], step, pr)
        touched = set()
        for idx, step in batch:
            if (idx, step) in paid:
                pr = paid[idx, step]
                r = results[idx]
                r.completions += pr.completions
                r.generated_tokens += pr.generated_tokens
                r.prompt_tokens += pr.prompt_tokens
            else:
                pr = known[evidence.key(items[idx], step)]
                results[idx].shared_probes += 1
            r = results[idx]
            touched.add(idx)
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
            r.probe_k.append(pr.completions - pr.failed)
            searches[idx].observe(step, hard)
        for idx in touched:
            results[idx].rounds += 1
    for idx, (item, s, r) in enumerate(zip(items, searches, results, strict=True)):
        if s is None or r.status != OK:
            r.first_error, r.labels = -1, []
            continue
        if evidence is not None and not verify and not (item.final_correct and item.final_known):
            r.free_positive = sum(1 for st in range(applied[idx] + 1) if st not in r.probe_steps)
        if not s.done:
            r.status, r.detail = ERROR, f"search did not finish in {max_rounds} rounds"
            r.labels = []
            continue
        r.first_error = s.first_error
        r.labels = labels_for(r.first_error, len(item.steps))
    return results


def _apply_proofs(items: Sequence[MCItem], searches: list, results: list[MCResult], evidence: Evidence,
                  applied: list[int]) -> None:
    """Tell each search which of its prefixes are proven positive (only what is new since the last call)."""
    for idx, (item, s) in enumerate(zip(items, searches, strict=True)):
        if s is None or results[idx].status != OK:
            continue
        deepest = evidence.deepest_proven(item)
        if item.final_known and not item.final_correct:
            deepest = min(deepest, len(item.steps) - 2)  # the whole wrong solution is known to be 0
        if deepest > applied[idx]:
            s.known_positive(deepest)
            applied[idx] = deepest


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
        return self.sample(probes, 0, self.k)

    def sample(self, probes: list[tuple[MCItem, int]], first: int, n: int) -> list[ProbeResult]:
        """Estimates from samples ``first .. first+n-1`` of each prefix (the waves of :class:`AdaptiveValue`)."""
        out: list[ProbeResult] = []
        for start in range(0, len(probes), self.batch_prefixes):
            out.extend(self._estimate(probes[start : start + self.batch_prefixes], self.max_tokens, first, n))
        return out

    def _estimate(self, chunk: list[tuple[MCItem, int]], max_tokens: int, first: int = 0,
                  n: int | None = None) -> list[ProbeResult]:
        """One engine call; probes whose every completion failed are retried once per halved budget.

        Why: a long prefix leaves less room in the model's context, and
        engines refuse ``prompt + max_tokens`` beyond it. The completion of a
        longer prefix also needs fewer tokens, so a smaller budget (down to
        ``min_tokens``) is a fair estimate; a completion that runs out of
        budget simply counts as not reaching the answer. Probes that still
        fail stay failed (recorded as an ``error`` rollout, never guessed).
        """
        n = self.k if n is None else n
        params = SamplingParams(n=n, temperature=self.temperature, top_p=self.top_p,
                                max_tokens=max_tokens, seed=self.seed, sample_offset=first)
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
            right = tuple(c.text for c in good if self.grade(c.text, item.gold))
            out.append(ProbeResult(soft=len(right) / len(good), completions=len(cs),
                                   generated_tokens=sum(c.completion_tokens for c in cs),
                                   prompt_tokens=sum(c.prompt_tokens for c in cs[:1]), failed=len(cs) - len(good),
                                   correct_texts=right))
        if retry and max_tokens // 2 >= self.min_tokens:
            self.retried += len(retry)
            again = self._estimate([chunk[i] for i in retry], max_tokens // 2, first, n)
            for i, r in zip(retry, again, strict=True):
                out[i] = r
        return [r if r is not None else ProbeResult(None, 0, 0, 0, failed=n, too_long=i in too_long)
                for i, r in enumerate(out)]


Sampler = Callable[[list[tuple[MCItem, int]], int, int], list[ProbeResult]]


@dataclass
class AdaptiveValue:
    """A value function that samples each prefix in waves and stops at its first correct completion.

    ``sample(probes, first, n)`` draws samples ``first .. first+n-1`` of each
    prefix (:meth:`EngineValue.sample`). Waves are ``first_wave`` samples,
    then double, until ``k`` are drawn; a prefix leaves the waves at its first
    correct completion (its hard value is decided: > 0) or when a wave fails
    in the engine. Why this is the K-sample test with the same error rate,
    and what it does to soft values: module doc. ``waves`` counts sampling
    calls, ``saved`` the samples not drawn against ``k`` per prefix.
    """

    sample: Sampler
    k: int = 8
    first_wave: int = 2
    waves: int = 0
    saved: int = 0

    def __call__(self, probes: list[tuple[MCItem, int]]) -> list[ProbeResult]:
        acc: list[dict] = [{"right": [], "good": 0, "completions": 0, "gen": 0, "prompt": 0, "failed": 0,
                            "dead": None} for _ in probes]
        pending, drawn, size = list(range(len(probes))), 0, max(1, self.first_wave)
        while pending and drawn < self.k:
            size = min(size, self.k - drawn)
            self.waves += 1
            for i, pr in zip(pending, self.sample([probes[i] for i in pending], drawn, size), strict=True):
                a = acc[i]
                a["completions"] += pr.completions
                a["gen"] += pr.generated_tokens
                a["prompt"] += pr.prompt_tokens
                a["failed"] += pr.failed
                if pr.soft is None:
                    a["dead"] = pr
                    continue
                a["good"] += pr.completions - pr.failed
                a["right"].extend(pr.correct_texts)
            drawn += size
            pending = [i for i in pending if not acc[i]["right"] and acc[i]["dead"] is None]
            size *= 2
        out = []
        for a in acc:
            if a["dead"] is not None:  # a failed wave fails the probe (recorded, never guessed)
                out.append(ProbeResult(None, a["completions"], a["gen"], a["prompt"], failed=a["failed"],
                                       too_long=a["dead"].too_long))
                continue
            self.saved += self.k - a["completions"]
            out.append(ProbeResult(len(a["right"]) / max(a["good"], 1), a["completions"], a["gen"], a["prompt"],
                                   failed=a["failed"], correct_texts=tuple(a["right"])))
        return out


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
