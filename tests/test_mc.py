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
    from prmforge.engines.tiny import build_tiny_qwen2

    engine = HFEngine(str(build_tiny_qwen2(tmp_path / "tiny")), device="cpu", batch_size=64)
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


# ---------------------------------------------------------------------------
# reuse (shared evidence between the rollouts of a problem) and adaptive sampling
# ---------------------------------------------------------------------------
class TreeSampler:
    """Completions of a prefix from a table ``prefix steps -> [(text, correct), ...]`` in sample order.

    ``sample(probes, first, n)`` returns samples ``first .. first+n-1``, like the hf engine with
    ``sample_offset``; a prefix missing from the table draws ``default``. Every drawn sample is logged.
    """

    def __init__(self, table: dict[tuple[str, ...], list[tuple[str, bool]]], k: int = 8,
                 default: tuple[str, bool] = ("x = 1.\nThe answer is 1.", False)) -> None:
        self.table, self.k, self.default = table, k, default
        self.drawn: list[tuple[tuple[str, ...], int]] = []

    def sample(self, probes, first: int, n: int):
        out = []
        for item, step in probes:
            key = tuple(item.steps[: step + 1])
            seq = self.table.get(key, [self.default] * self.k)
            got = seq[first : first + n]
            self.drawn.extend((key, first + j) for j in range(len(got)))
            right = tuple(t for t, ok in got if ok)
            out.append(ProbeResult(len(right) / len(got), len(got), 10 * len(got), 5, correct_texts=right))
        return out

    def __call__(self, probes):
        return self.sample(probes, 0, self.k)


def _tree_problem(rng: random.Random, pid: int, n_rollouts: int, gold: str = "7"):
    """Rollouts of one problem that share prefixes (a random tree), and a completion table.

    Every prefix has a true value; its K completions are correct with that probability. A correct
    completion either finishes directly or walks down an existing branch (so it proves deeper nodes).
    """
    prompt = f"Problem {pid}\n"
    rollouts: list[list[str]] = []
    for _ in range(n_rollouts):
        if rollouts and rng.random() < 0.7:  # branch off a sibling
            base = rng.choice(rollouts)
            cut = rng.randrange(len(base))
            steps = base[:cut]
        else:
            steps = []
        while len(steps) < rng.randint(2, 7):
            steps.append(f"s{pid}.{rng.randrange(3)}.{len(steps)}")
        steps[-1] += f" The answer is {len(rollouts)}."  # a last step states its answer: nothing continues it
        rollouts.append(steps)
    value = {}
    for steps in rollouts:
        for i in range(len(steps) - 1):  # the last prefix is never sampled: its value is known
            key = tuple(steps[: i + 1])
            value.setdefault(key, rng.choice([0.0, 0.0, 0.1, 0.3, 0.6, 1.0]))
    table = {}
    for key, v in value.items():
        seq = []
        for _ in range(8):
            if rng.random() < v:
                deeper = [r for r in rollouts if tuple(r[: len(key)]) == key and len(r) > len(key)]
                # never the whole of a sibling: its last step states its own final answer
                d = rng.choice(deeper) if deeper else key
                tail = list(d[len(key):rng.randint(len(key), max(len(key), len(d) - 1))])
                seq.append(("\n".join([*tail, f"The answer is {gold}."]), True))
            else:
                seq.append(("y = 2.\nThe answer is 2.", False))
        table[key] = seq
    items = [MCItem(f"p{pid}-{j}", prompt, steps, gold, rng.random() < 0.3) for j, steps in enumerate(rollouts)]
    return items, table


def _proven(items: list[MCItem], table, item: MCItem, step: int, drawn=None) -> bool:
    """Brute force: does a correct rollout, or a correct completion in the table (of those ``drawn``, when
    given), pass through this prefix?"""
    node = tuple(item.steps[: step + 1])
    for other in items:
        if other.prompt == item.prompt and other.final_correct and tuple(other.steps[: len(node)]) == node:
            return True
    for key, seq in table.items():
        if not any(o.prompt == item.prompt and tuple(o.steps[: len(key)]) == key for o in items):
            continue
        for j, (text, ok) in enumerate(seq):
            if drawn is not None and (key, j) not in drawn:
                continue
            full = (*key, *[s.strip() for s in text.split("\n") if s.strip()])
            if ok and full[: len(node)] == node:
                return True
    return False


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reuse_changes_no_label_except_where_a_correct_solution_proves_the_prefix(seed: int) -> None:
    rng = random.Random(seed)
    items, table = [], {}
    for pid in range(25):
        its, tab = _tree_problem(rng, pid, n_rollouts=4)
        items += its
        table.update({(f"Problem {pid}\n", *k): v for k, v in tab.items()})
    # the sampler keys on steps only: make step texts unique per problem (they are: s{pid}.*)
    flat = {k[1:]: v for k, v in table.items()}
    plain = run_search(items, "binary_search", TreeSampler(flat))
    reuse_sampler = TreeSampler(flat)
    reused = run_search(items, "binary_search", reuse_sampler, reuse=True)
    changed = 0
    for item, p, r in zip(items, plain, reused, strict=True):
        assert r.status == OK and r.labels == labels_for(r.first_error, len(item.steps))
        # same completions -> the same estimate wherever both probed the same prefix
        for step, hard in zip(r.probe_steps, r.probe_hard, strict=True):
            if step in p.probe_steps:
                assert hard == p.probe_hard[p.probe_steps.index(step)]
        if r.first_error != p.first_error:
            changed += 1
            # plain search called some prefix 0 that a correct solution passes through, or the K-sample
            # estimates along this rollout are not monotone (then any two probe orders can disagree)
            est = [any(ok for _, ok in flat.get(tuple(item.steps[: i + 1]), [])) for i in range(len(item.steps))]
            monotone = all(est[i] or not est[j] for i in range(len(est)) for j in range(i + 1, len(est) - 1))
            assert not monotone or any(not h and _proven(items, flat, item, s)
                                       for s, h in zip(p.probe_steps, p.probe_hard, strict=True)), (item, p, r)
        # reuse never labels a proven prefix negative
        if r.first_error >= 0:
            assert not _proven(items, flat, item, r.first_error, set(reuse_sampler.drawn))
    assert sum(r.completions for r in reused) < sum(p.completions for p in plain)
    assert len(set(reuse_sampler.drawn)) == len(reuse_sampler.drawn)  # no prefix sampled twice
    assert changed > 0  # the random tables do hold sampled zeros that proofs overrule


def test_reuse_with_consistent_evidence_gives_plain_binary_labels_for_less() -> None:
    """No proof contradicts an estimate (monotone values): labels identical, shared prefixes sampled once."""
    rng = random.Random(5)
    items, values = [], {}
    for pid in range(30):
        trunk = [f"t{pid}.{i}" for i in range(rng.randint(1, 4))]
        fe = rng.randrange(len(trunk) + 3)
        for j in range(4):
            steps = trunk + [f"b{pid}.{j}.{i}" for i in range(rng.randint(1, 3))]
            item = MCItem(f"p{pid}-{j}", f"P{pid}\n", steps, "7", False)
            items.append(item)
            values[item.rollout_id] = [0.5 if i < fe and i < len(trunk) else 0.0 for i in range(len(steps))]
    plain = run_search(items, "binary_search", TableValue(values))
    reused = run_search(items, "binary_search", TableValue(values), reuse=True)
    assert [r.first_error for r in reused] == [p.first_error for p in plain]
    assert sum(r.completions for r in reused) < sum(p.completions for p in plain)
    assert sum(r.shared_probes for r in reused) > 0


def test_correct_sibling_proves_shared_prefixes_without_sampling() -> None:
    items = [MCItem("ok", "P\n", ["a", "b", "c", "d"], "7", True),
             MCItem("w1", "P\n", ["a", "b", "c", "x"], "7", False),
             MCItem("w2", "P\n", ["a", "y", "z", "w", "v"], "7", False),
             MCItem("other", "Q\n", ["a", "b", "c", "x"], "7", False)]  # another problem: no evidence from P
    sampler = TreeSampler({})  # every sampled completion is wrong
    res = {r.rollout_id: r for r in run_search(items, "binary_search", sampler, reuse=True)}
    assert res["w1"].first_error == 3 and res["w1"].completions == 0 and res["w1"].free_positive == 3
    assert 0 not in res["w2"].probe_steps and res["w2"].first_error == 1  # step 0 proven by the sibling
    assert res["other"].first_error == 0 and res["other"].completions > 0
    per_step = {r.rollout_id: r for r in run_search(items, "per_step", TreeSampler({}), reuse=True)}
    assert per_step["w1"].probe_steps == [] and per_step["w1"].first_error == 3
    assert per_step["w2"].probe_steps == [1, 2, 3]


def test_correct_completion_proves_the_prefixes_it_passes_through() -> None:
    # round 1 probes w1 at step 1 and w2 at step 2 (every sampled completion but those of (a, b) is
    # wrong); a correct completion from (a, b) writes w2's next two steps, so w2's prefixes up to index
    # 3 are positive: the zero sampled at w2's step 2 is overruled and the search goes on above 3
    items = [MCItem("w1", "P\n", ["a", "b", "e", "f"], "7", False),
             MCItem("w2", "P\n", ["a", "b", "c", "d", "g", "h"], "7", False)]
    table = {("a", "b"): [("c\nd\nThe answer is 7.", True)] * 8}
    res = {r.rollout_id: r for r in run_search(items, "binary_search", TreeSampler(table), reuse=True)}
    assert res["w2"].first_error == 4 and 3 not in res["w2"].probe_steps
    assert res["w2"].probe_steps == [2, 4] and res["w2"].probe_hard == [False, False]
    assert res["w1"].first_error == 2


def test_truncated_rollout_with_proven_last_prefix_is_all_positive() -> None:
    items = [MCItem("ok", "P\n", ["a", "b"], "7", True), MCItem("cut", "P\n", ["a", "b"], "7", False, final_known=False)]
    res = run_search(items, "binary_search", TreeSampler({}), reuse=True)
    assert res[1].first_error == -1 and res[1].completions == 0


def test_adaptive_makes_the_fixed_k_decision_and_stops_at_the_first_success() -> None:
    from prmforge.labeling.mc import AdaptiveValue

    rng = random.Random(3)
    items, table = [], {}
    for i in range(80):
        item = MCItem(f"r{i}", "P\n", [f"s{i}"], "7", False)
        items.append(item)
        v = rng.choice([0.0, 0.05, 0.2, 0.5, 0.9])
        table[(f"s{i}",)] = [("The answer is 7." if ok else "no", ok) for ok in (rng.random() < v for _ in range(8))]
    fixed = TreeSampler(table)([(it, 0) for it in items])
    sampler = TreeSampler(table)
    adaptive = AdaptiveValue(sampler.sample, k=8, first_wave=2)
    got = adaptive([(it, 0) for it in items])
    for it, f, a in zip(items, fixed, got, strict=True):
        assert (f.soft > 0) == (a.soft > 0)
        seq = [ok for _, ok in table[tuple(it.steps)]]
        if not any(seq):
            assert a.completions == 8  # undecided until the budget is spent
        else:
            first = seq.index(True)
            # waves of 2, 4, 2: the first wave that contains the first success is the last one drawn
            assert a.completions == next(c for c in (2, 6, 8) if c > first)
    assert adaptive.waves == 3 and adaptive.saved == sum(8 - a.completions for a in got)
    assert sum(a.completions for a in got) < 8 * len(items)


def test_all_strategies_find_the_oracle_first_error_on_world_rollouts() -> None:
    """World problems, the oracle's values (a prefix reaches the answer iff it has no error yet): every
    strategy finds the oracle's first error; reuse and adaptive do it with fewer completions."""
    from rollout_helpers import world_solution

    from prmforge.labeling.mc import AdaptiveValue
    from prmforge.world import generate_problems, oracle_first_error, prompt_for

    items, truth, gold_steps = [], {}, {}
    for p in generate_problems(40, seed=11, difficulty="standard"):
        sols = [world_solution(p.meta)] + [world_solution(p.meta, slip_at=s) for s in range(len(p.meta["ops"]))]
        if any(s is None for s in sols) or len(sols[0]) < 3:
            continue
        prompt = prompt_for(p.problem)
        gold_steps[prompt] = sols[0]
        for j, steps in enumerate(sols):
            it = MCItem(f"{p.problem_id}-{j}", prompt, steps, p.answer, j == 0)
            items.append(it)
            truth[it.rollout_id] = oracle_first_error(p.meta, steps).first_error

    class OracleSampler:
        """A completion is right iff the prefix has no error (then, half of the time); right ones finish the
        gold solution, so they pass through the gold rollout's prefixes."""

        def sample(self, probes, first, n):
            out = []
            for item, step in probes:
                ok_prefix = truth[item.rollout_id] < 0 or step < truth[item.rollout_id]
                rs = [random.Random(f"{item.rollout_id}|{step}|{first + j}").random() < 0.5 for j in range(n)]
                rs[0] = rs[0] or (ok_prefix and first == 0)  # at least one success in K: value > 0 is seen
                right = tuple("\n".join(gold_steps[item.prompt][step + 1:]) for r in rs if r and ok_prefix)
                out.append(ProbeResult(len(right) / n, n, 10 * n, 5, correct_texts=right))
            return out

        def __call__(self, probes):
            return self.sample(probes, 0, 8)

    assert len(items) > 60 and sum(fe >= 0 for fe in truth.values()) > 40
    costs = {}
    for mode in ("per_step", "binary_search"):
        for reuse in (False, True):
            for adaptive in (False, True):
                fn = AdaptiveValue(OracleSampler().sample, k=8) if adaptive else OracleSampler()
                res = run_search(items, mode, fn, reuse=reuse)
                assert {r.rollout_id: r.first_error for r in res} == truth, (mode, reuse, adaptive)
                costs[mode, reuse, adaptive] = sum(r.completions for r in res)
    # with the correct gold sibling every prefix before a slip is proven, so reuse samples only zeros
    # (which adaptive cannot cut short); without reuse adaptive saves on the positive probes
    assert costs["binary_search", True, True] <= costs["binary_search", True, False] < costs[
        "binary_search", False, True] < costs["binary_search", False, False] < costs["per_step", False, False]


def test_reuse_and_adaptive_on_a_real_tiny_model_are_deterministic(tmp_path) -> None:
    """Same seed, same labels; with the hf engine adaptive waves are the fixed-K samples (same decisions)."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from prmforge.engines.hf import HFEngine
    from prmforge.engines.tiny import build_tiny_qwen2
    from prmforge.labeling.mc import AdaptiveValue

    engine = HFEngine(str(build_tiny_qwen2(tmp_path / "tiny")), device="cpu", batch_size=64)

    def grade(text: str, gold: str) -> bool:
        return any(c.isdigit() for c in text)

    items = [MCItem(f"r{i}", "Tom has 3 apples.\n", ["3 + 5 = 8", "8 x 2 = 16", f"16 - {i} = {16 - i}",
                                                      "The answer is 1."], "16", False) for i in range(3)]

    def label(adaptive: bool, reuse: bool):
        value = EngineValue(engine, grade=grade, k=4, max_tokens=8, separator="\n", seed=3)
        fn = AdaptiveValue(value.sample, k=4, first_wave=1) if adaptive else value
        return run_search(items, "per_step", fn, reuse=reuse), value

    first, _ = label(True, True)
    again, _ = label(True, True)
    assert [(r.first_error, r.probe_steps, r.probe_soft, r.completions) for r in first] == [
        (r.first_error, r.probe_steps, r.probe_soft, r.completions) for r in again]
    fixed, fixed_value = label(False, False)
    for a, f in zip(first, fixed, strict=True):
        for step, hard in zip(a.probe_steps, a.probe_hard, strict=True):
            assert hard == f.probe_hard[f.probe_steps.index(step)]
    # the shared first two prefixes are sampled once with reuse
    assert sum(r.shared_probes for r in first) == 4
    assert sum(r.completions for r in first) < sum(r.completions for r in fixed)


# ---------------------------------------------------------------------------
# verify: per_step's first error, not an estimate of it
# ---------------------------------------------------------------------------
def test_verify_returns_per_step_first_error_where_plain_binary_search_misses_the_dip() -> None:
    # sampled values that are not monotone: a 0 at step 1 below a success at step 2 (finite-K noise)
    items = _items([(4, True), (5, False), (5, False)])
    values = {"r0": [0.5, 0.0, 0.5, 1.0], "r1": [0.5, 0.0, 0.25, 0.0, 0.0], "r2": [0.5, 0.5, 0.25, 0.5, 0.0]}
    ps = run_search(items, "per_step", TableValue(values))
    bs = run_search(items, "binary_search", TableValue(values))
    assert [r.first_error for r in ps] == [1, 1, 4] and [r.first_error for r in bs] == [-1, 3, 4]
    vb = run_search(items, "binary_search", TableValue(values), verify=True)
    assert [r.first_error for r in vb] == [1, 1, 4]
    assert vb[0].probe_steps == [0, 1]  # a correct rollout is scanned up to its first zero
    # binary search probes 2 (> 0) and 3 (0); the scan probes 0 and 1, only inferred positive, and stops at 1
    assert vb[1].probe_steps == [2, 3, 0, 1] and vb[1].labels == [True, False]
    assert vb[2].probe_steps == [2, 3, 0, 1]  # 2 and 3 observed > 0: the scan checks only 0 and 1
    scan = run_search(items, "per_step", TableValue(values), verify=True)
    assert [r.first_error for r in scan] == [1, 1, 4]
    assert [r.probe_steps for r in scan] == [[0, 1], [0, 1], [0, 1, 2, 3]]  # stops at the first zero


def test_verify_equals_per_step_on_random_non_monotone_values_with_reuse_and_adaptive() -> None:
    """Same completions for a prefix in every mode (as with the hf engine): every verified variant gives
    per_step's first error on every rollout, where plain binary search and reuse proofs do not."""
    from prmforge.labeling.mc import AdaptiveValue

    rng = random.Random(7)
    items, flat = [], {}
    for pid in range(25):
        its, tab = _tree_problem(rng, pid, n_rollouts=4)
        items += [MCItem(i.rollout_id, i.prompt, i.steps, i.gold, i.final_correct, final_known=rng.random() > 0.1)
                  for i in its]
        flat.update(tab)
    truth = {r.rollout_id: r.first_error for r in run_search(items, "per_step", TreeSampler(flat))}
    plain = {r.rollout_id: r.first_error for r in run_search(items, "binary_search", TreeSampler(flat),
                                                                 reuse=True)}
    assert plain != truth  # the random tables hold dips plain binary search (with proofs) labels otherwise
    cost = {}
    for mode in ("per_step", "binary_search"):
        for reuse in (False, True):
            for adaptive in (False, True):
                sampler = TreeSampler(flat)
                fn = AdaptiveValue(sampler.sample, k=8, first_wave=1) if adaptive else sampler
                res = run_search(items, mode, fn, reuse=reuse, verify=True)
                assert {r.rollout_id: r.first_error for r in res} == truth, (mode, reuse, adaptive)
                assert all(r.status == OK and r.free_positive == 0 for r in res)
                cost[mode, reuse, adaptive] = len(sampler.drawn)
    per_step_cost = sum(r.completions for r in run_search(items, "per_step", TreeSampler(flat)))
    assert cost["per_step", True, True] < cost["per_step", False, False] < per_step_cost
    assert cost["binary_search", True, True] < cost["binary_search", False, False]


def test_verify_with_reuse_never_lets_a_proof_overrule_an_observed_zero() -> None:
    # the correct sibling proves (a), (a, b), (a, b, c) positive, but every sampled completion is wrong:
    # plain reuse labels w1 at its last step for free; per_step (and verify) label the first sampled zero
    items = [MCItem("ok", "P\n", ["a", "b", "c", "d"], "7", True),
             MCItem("w1", "P\n", ["a", "b", "c", "x"], "7", False)]
    proofs = {r.rollout_id: r for r in run_search(items, "binary_search", TreeSampler({}), reuse=True)}
    assert proofs["w1"].first_error == 3 and proofs["ok"].first_error == -1
    sampler = TreeSampler({})
    res = {r.rollout_id: r for r in run_search(items, "binary_search", sampler, reuse=True, verify=True)}
    assert res["ok"].first_error == 0 and res["w1"].first_error == 0
    assert res["w1"].free_positive == 0
    assert len(set(sampler.drawn)) == len(sampler.drawn) == 8  # (a) sampled once, shared by both rollouts
    assert res["ok"].shared_probes + res["w1"].shared_probes == 1


def test_verify_setting_names_the_strategy() -> None:
    from prmforge.labeling.settings import MCSettings

    assert MCSettings(verify=True, reuse=True, adaptive=True).strategy == "binary_search+verify+reuse+adaptive"
    assert MCSettings().strategy == "binary_search"
