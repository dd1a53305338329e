"""Monte Carlo step labels: search logic on deterministic value functions, then a real tiny model."""

from __future__ import annotations

import math
import random

import pytest

from prmforge.labeling.mc import (
    EMPTY,
    ERROR,
    OK,
    EngineValue,
    MCItem,
    ProbeResult,
    labels_for,
    max_binary_probes,
    prefix_prompt,
    run_search,
)


def _items(specs: list[tuple[int, bool]]) -> list[MCItem]:
    return [MCItem(f"r{i}", "Problem: p\nSolution:\n", [f"s{j}" for j in range(n)], "7", ok)
            for i, (n, ok) in enumerate(specs)]


class TableValue:
    """Value function from a table ``rollout_id -> list of soft values`` (one per step)."""

    def __init__(self, values: dict[str, list[float]], k: int = 8) -> None:
        self.values = values
        self.k = k
        self.calls: list[int] = []

    def __call__(self, probes):
        self.calls.append(len(probes))
        return [ProbeResult(self.values[item.rollout_id][step], self.k, 10 * self.k, 5) for item, step in probes]


def test_labels_for() -> None:
    assert labels_for(-1, 3) == [True, True, True]
    assert labels_for(0, 3) == [False]
    assert labels_for(2, 4) == [True, True, False]


@pytest.mark.parametrize("mode", ["per_step", "binary_search"])
def test_monotone_values_give_the_same_first_error_in_both_modes(mode: str) -> None:
    rng = random.Random(0)
    specs, values, expected = [], {}, []
    for i in range(60):
        n = rng.randint(1, 9)
        correct = rng.random() < 0.4
        if correct:
            soft = [rng.choice([0.25, 0.5, 1.0]) for _ in range(n)]
            fe = -1
        else:
            fe = rng.randrange(n)
            soft = [0.5] * fe + [0.0] * (n - fe)
        specs.append((n, correct))
        values[f"r{i}"] = soft
        expected.append(fe)
    items = _items(specs)
    results = run_search(items, mode, TableValue(values))
    assert [r.first_error for r in results] == expected
    for r, item in zip(results, items, strict=True):
        assert r.status == OK
        assert r.labels == labels_for(r.first_error, len(item.steps))
        assert len(r.probe_steps) == len(r.probe_soft) == len(r.probe_hard)
        assert r.completions == 8 * len(r.probe_steps)
        if mode == "binary_search":
            # free facts: no probe on a correct rollout, at most ceil(log2 n) on a wrong one
            assert len(r.probe_steps) == 0 if item.final_correct else len(r.probe_steps) <= max_binary_probes(
                len(item.steps))
            assert (len(item.steps) - 1) not in r.probe_steps  # the last prefix is free
        else:
            assert r.probe_steps == list(range(len(item.steps) - 1))


def test_binary_search_probe_count_is_logarithmic_and_rounds_are_batched() -> None:
    n = 16
    items = _items([(n, False)] * 5)
    values = {f"r{i}": [1.0] * fe + [0.0] * (n - fe) for i, fe in enumerate([0, 3, 7, 12, 15])}
    fn = TableValue(values)
    results = run_search(items, "binary_search", fn)
    assert [r.first_error for r in results] == [0, 3, 7, 12, 15]
    assert all(len(r.probe_steps) <= math.ceil(math.log2(n)) for r in results)
    # every round probes all unfinished rollouts together: one value_fn call per round
    assert len(fn.calls) == max(r.rounds for r in results) and fn.calls[0] == 5
    per_step = run_search(items, "per_step", TableValue(values))
    assert sum(r.completions for r in results) * 3 < sum(r.completions for r in per_step)


def test_per_step_finds_non_monotone_dip_that_binary_search_skips() -> None:
    # soft values of a correct rollout: an unlucky 0 at step 1 (finite-K noise)
    items = _items([(4, True), (5, False)])
    values = {"r0": [0.5, 0.0, 0.5, 1.0], "r1": [0.5, 0.0, 0.25, 0.0, 0.0]}
    ps = run_search(items, "per_step", TableValue(values))
    bs = run_search(items, "binary_search", TableValue(values))
    assert [r.first_error for r in ps] == [1, 1]
    assert bs[0].first_error == -1  # correct final answer: -1 for free
    assert bs[1].first_error == 3  # probed 2 (>0) then 3 (0): the dip at 1 is invisible
    assert ps[0].probe_soft == [0.5, 0.0, 0.5]


def test_wrong_rollout_with_all_positive_probes_fails_at_last_step() -> None:
    items = _items([(3, False), (1, False), (1, True)])
    values = {"r0": [1.0, 1.0, 0.0], "r1": [0.0], "r2": [1.0]}
    for mode in ("per_step", "binary_search"):
        res = run_search(items, mode, TableValue(values))
        assert [r.first_error for r in res] == [2, 0, -1]
        assert res[1].completions == 0 and res[2].completions == 0  # single steps are free


def test_engine_failures_and_empty_rollouts_are_recorded_not_guessed() -> None:
    items = _items([(3, False), (0, False)])

    def failing(probes):
        return [ProbeResult(None, 8, 0, 0, failed=8) for _ in probes]

    res = run_search(items, "per_step", failing)
    assert res[0].status == ERROR and res[0].labels == [] and "failed" in res[0].detail
    assert res[1].status == EMPTY and res[1].labels == []


def test_prefix_prompt_rebuilds_policy_text() -> None:
    item = MCItem("r", "Problem: p\nSolution:\n", ["a = 1.", "b = 2.", "The answer is 2."], "2", True)
    assert prefix_prompt(item, 0, "\n") == "Problem: p\nSolution:\na = 1.\n"
    assert prefix_prompt(item, 1, "\n") == "Problem: p\nSolution:\na = 1.\nb = 2.\n"
    # with the raw text the prefix is cut from it: the policy's own whitespace, whatever the separator
    raw = " a = 1.\n\n  b = 2.\n\nThe answer is 2.\n"
    item = MCItem("r", "Q\n", ["a = 1.", "b = 2.", "The answer is 2."], "2", False, final_known=False, text=raw)
    assert prefix_prompt(item, 0, "\n") == "Q\n a = 1.\n\n  "
    assert prefix_prompt(item, 1, "\n") == "Q\n a = 1.\n\n  b = 2.\n\n"
    assert prefix_prompt(item, 2, "\n") == "Q\n" + raw


def test_engine_value_with_real_tiny_model(tmp_path) -> None:
    """K completions per prefix through HFEngine; results do not depend on the batch."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from prmforge.engines.hf import HFEngine
    from prmforge.engines.tiny import build_tiny_llama

    engine = HFEngine(str(build_tiny_llama(tmp_path / "tiny")), device="cpu", batch_size=64)
    # a grader that accepts any completion containing a digit: the random model emits
    # digits often but not always, so soft values land strictly inside [0, 1]
    value = EngineValue(engine, grade=lambda text, gold: any(c.isdigit() for c in text), k=4, max_tokens=8,
                        separator="\n", batch_prefixes=3)
    items = [MCItem(f"r{i}", "Tom has 3 apples.\n", ["3 + 5 = 8", "8 x 2 = 16", "The answer is 16."],
                    "16", i % 2 == 0) for i in range(3)]
    res = run_search(items, "per_step", value)
    assert value.calls == 2  # 6 prefixes, 3 per generate call
    for r in res:
        assert r.status == OK and len(r.probe_soft) == 2
        assert all(v in (0.0, 0.25, 0.5, 0.75, 1.0) for v in r.probe_soft)
        assert r.completions == 8 and 0 < r.generated_tokens <= 8 * 8 and r.prompt_tokens > 0
    # same prefixes, one big call: identical estimates (counter-based sampling)
    value2 = EngineValue(engine, grade=value.grade, k=4, max_tokens=8, separator="\n", batch_prefixes=64)
    res2 = run_search(items, "per_step", value2)
    assert [r.probe_soft for r in res2] == [r.probe_soft for r in res]
    # binary search on the same prefixes agrees wherever the estimate is monotone
    bs = run_search(items, "binary_search", value2)
    for b, p in zip(bs, res, strict=True):
        for step, soft in zip(b.probe_steps, b.probe_soft, strict=True):
            assert soft == p.probe_soft[p.probe_steps.index(step)]


def test_truncated_rollout_probes_its_last_prefix() -> None:
    """A rollout cut off by max_tokens has no free last value: both modes sample it."""
    items = [MCItem("r0", "p\n", ["s0", "s1", "s2", "s3"], "7", False, final_known=False),
             MCItem("r1", "p\n", ["s0", "s1", "s2", "s3"], "7", False, final_known=False)]
    values = {"r0": [1.0, 0.5, 0.5, 0.25], "r1": [1.0, 0.5, 0.0, 0.0]}
    for mode in ("per_step", "binary_search"):
        res = run_search(items, mode, TableValue(values))
        assert [r.first_error for r in res] == [-1, 2], mode
        assert 3 in res[0].probe_steps
    bs = run_search(items, "binary_search", TableValue(values))
    assert bs[0].probe_steps == [3]  # one probe settles an all-positive truncated rollout


def test_engine_value_retries_failed_probes_with_a_smaller_budget() -> None:
    """A prefix too long for the context gets a halved completion budget; a hopeless one stays failed."""
    from prmforge.engines.base import Completion, Engine

    class ContextLimited(Engine):
        """Refuses prompt + max_tokens beyond 60 characters-as-tokens, like a real context limit."""

        def __init__(self) -> None:
            self.budgets: list[int] = []

        def generate(self, prompts, params):
            self.budgets.append(params.max_tokens)
            out = []
            for p in prompts:
                if len(p) + params.max_tokens > 60:
                    out.append([Completion("", len(p), 0, "error", "too long")] * params.n)
                else:
                    out.append([Completion("The answer is 7.", len(p), 5)] * params.n)
            return out

    eng = ContextLimited()
    value = EngineValue(eng, grade=lambda t, g: g in t, k=2, max_tokens=40, min_tokens=10)
    short = MCItem("a", "p\n", ["s"], "7", False)
    long = MCItem("b", "p" * 30 + "\n", ["s"], "7", False)
    hopeless = MCItem("c", "p" * 70 + "\n", ["s"], "7", False)
    res = value([(short, 0), (long, 0), (hopeless, 0)])
    assert res[0].soft == 1.0 and res[1].soft == 1.0 and res[2].soft is None
    assert eng.budgets == [40, 20, 10]  # only failed probes are retried, each time with half the budget


def test_a_prefix_longer_than_the_context_is_skipped_with_a_reason_not_an_engine_error() -> None:
    """Real GSM8K prompts on a short-context policy: the labeler cannot probe them; that is counted, not failed."""
    from prmforge.engines.base import PROMPT_TOO_LONG, Completion, Engine
    from prmforge.labeling.mc import ERROR, OK, SKIPPED, run_search

    class ContextLimited(Engine):
        def generate(self, prompts, params):
            out = []
            for p in prompts:
                if "down" in p:
                    out.append([Completion("", 0, 0, "error", "connection reset")] * params.n)
                elif len(p) + params.max_tokens > 60:
                    out.append([Completion("", len(p), 0, "error", f"{PROMPT_TOO_LONG} (max 60 positions)")]
                               * params.n)
                else:
                    out.append([Completion("The answer is 7.", len(p), 5)] * params.n)
            return out

    value = EngineValue(ContextLimited(), grade=lambda t, g: g in t, k=2, max_tokens=40, min_tokens=10)
    fits = MCItem("a", "p\n", ["s1", "s2"], "7", False)
    too_long = MCItem("b", "p" * 70 + "\n", ["s1", "s2"], "7", False)
    outage = MCItem("c", "down\n", ["s1", "s2"], "7", False)
    res = {r.rollout_id: r for r in run_search([fits, too_long, outage], "binary_search", value)}
    assert res["a"].status == OK
    assert res["b"].status == SKIPPED and "longer than the model's context" in res["b"].detail
    assert res["b"].labels == []
    assert res["c"].status == ERROR  # a real engine fault stays a failure
