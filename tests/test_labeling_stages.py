"""label_mc, label_judge and label_consensus without Dagster; judges are one class each and a custom one plugs in."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

import pytest
from test_labels_asset import PARTITION, _write_inputs

from prmforge.engines.base import Completion, Engine, SamplingParams
from prmforge.engines.factory import EngineConfig
from prmforge.labeling.judges import CalculatorJudge, Judge, JudgeConfig, Judgement, LLMJudge, make_judge
from prmforge.labeling.settings import ConsensusSettings, JudgeSettings, MCSettings
from prmforge.labeling.stages import JUDGE_SCHEMA, MC_SCHEMA, label_consensus, label_judge, label_mc
from prmforge.storage import Storage


class _ScriptedPolicy(Engine):
    """Completes a prefix with the gold answer unless the prefix holds a wrong step (a perfect policy)."""

    def __init__(self, golds: dict[str, str], wrong_steps: set[str]) -> None:
        self.golds, self.wrong_steps, self.calls = golds, wrong_steps, 0

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        self.calls += 1
        out = []
        for p in prompts:
            gold = next(g for prompt, g in self.golds.items() if p.startswith(prompt))
            answer = "-1" if any(w in p for w in self.wrong_steps) else gold
            out.append([Completion(f"The answer is {answer}.", 5, 4)] * params.n)
        return out


class _FirstStepJudge(Judge):
    """A custom judge: blames step 0 of every solution with more than one step."""

    needs_problem = True
    resumable = True

    def __init__(self) -> None:
        self.closed = False
        self.seen: list[str] = []

    @property
    def name(self) -> str:
        return "first-step"

    def judge(self, problems: Sequence[str], steps: Sequence[Sequence[str]],
              settings: JudgeSettings) -> list[Judgement]:
        self.seen += list(problems)
        return [Judgement("ok", 0 if len(st) > 1 else -1, "custom") for st in steps]

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def inputs(local_root: str) -> tuple[Storage, dict[str, int]]:
    storage = Storage(local_root)
    return storage, _write_inputs(storage)


def test_three_stages_run_without_dagster(inputs: tuple[Storage, dict[str, int]]) -> None:
    storage, truth = inputs
    rollouts = storage.read_dataset("policy_rollouts", PARTITION)
    seed = storage.read_dataset("seed_problems", PARTITION)
    rows = rollouts.to_pylist()
    golds = {r["prompt"]: r["gold_answer"] for r in rows}
    wrong = {r["steps"][truth[r["rollout_id"]]] for r in rows if r["rollout_id"].endswith("-1")}  # the slips
    policy = _ScriptedPolicy(golds, wrong)
    s = MCSettings(mode="per_step", k=2, shard_size=5, step_separator="world")
    mc = label_mc(storage, PARTITION, rollouts, s, EngineConfig(model="scripted"), True, engine_factory=lambda: policy)
    assert mc.table.schema.equals(MC_SCHEMA) and mc.sharded.shards_computed == 3 and policy.calls > 0
    # a perfect policy makes MC exact: slips at step 0, gold solutions -1, stopped-early ones at their last step
    assert {r["rollout_id"]: r["first_error"] for r in mc.table.to_pylist()} == truth
    assert mc.metadata()["status_counts"] == {"ok": 12} and mc.params(PARTITION)["model"] == "scripted"

    # resumed: every shard reused, no engine built
    again = label_mc(storage, PARTITION, rollouts, s, EngineConfig(model="scripted"), True,
                     engine_factory=lambda: pytest.fail("a resumed run built an engine"))
    assert again.sharded.shards_reused == 3 and again.table.equals(mc.table)

    with make_judge(JudgeConfig()) as calc:
        judged = label_judge(storage, PARTITION, rollouts, seed, JudgeSettings(), calc)
    assert judged.table.schema.equals(JUDGE_SCHEMA) and judged.sharded is None
    assert judged.metadata()["status_counts"] == {"ok": 12} and set(judged.table.column("judge").to_pylist()) == {
        "calculator"}

    cons = label_consensus(storage, PARTITION, mc.table, judged.table, seed, rollouts, ConsensusSettings())
    kept = {r["rollout_id"]: r["first_error"] for r in cons.table.to_pylist()}
    assert kept and all(fe == truth[rid] for rid, fe in kept.items())
    assert cons.audit.applicable and cons.audit.consensus.exact == 1.0
    assert storage.exists(storage.path("datasets", "consensus_labels_trl", PARTITION, "data.parquet"))
    checks = {c.name: c for c in cons.checks()}
    assert all(checks[n].passed and checks[n].blocking for n in ("labels_match_steps", "ids_unique",
                                                                 "no_label_after_first_negative",
                                                                 "traces_to_one_rollout"))
    assert not checks["kept_share_in_bounds"].blocking


def test_custom_judge_plugs_in(inputs: tuple[Storage, dict[str, int]]) -> None:
    storage, _ = inputs
    rollouts = storage.read_dataset("policy_rollouts", PARTITION)
    seed = storage.read_dataset("seed_problems", PARTITION)
    dropped = seed.column("problem_id")[0].as_py()
    with _FirstStepJudge() as judge:
        run = label_judge(storage, PARTITION, rollouts, seed.slice(1), JudgeSettings(shard_size=4), judge)
    assert judge.closed and len(judge.seen) == 9  # the rollouts of the dropped problem are never judged blind
    rows = run.table.to_pylist()
    steps = {r["rollout_id"]: r["steps"] for r in rollouts.to_pylist()}
    assert {r["judge"] for r in rows} == {"first-step"} and run.sharded is not None
    assert run.sharded.shards_computed == 3
    for r in rows:
        if r["problem_id"] == dropped:
            assert r["status"] == "error" and r["first_error"] is None
        else:
            assert r["status"] == "ok" and r["first_error"] == (0 if len(steps[r["rollout_id"]]) > 1 else -1)
    resumed = label_judge(storage, PARTITION, rollouts, seed.slice(1), JudgeSettings(shard_size=4), _FirstStepJudge())
    assert resumed.sharded is not None and resumed.sharded.shards_reused == 3 and resumed.table.equals(run.table)


def test_judges_are_one_class_each() -> None:
    assert isinstance(make_judge(JudgeConfig(kind="calculator")), CalculatorJudge)
    llm = make_judge(JudgeConfig(kind="llm", engine=EngineConfig(backend="openai", model="m")))
    assert isinstance(llm, LLMJudge) and llm.name == "llm:openai:m" and llm.identity()["backend"] == "openai"
    with pytest.raises(ValueError, match="needs a model"):
        make_judge(JudgeConfig(kind="llm"))
    calc = CalculatorJudge()
    verdicts = calc.judge(["", ""], [["2 + 2 = 5.", "The answer is 5."], []], JudgeSettings())
    assert [(v.status, v.first_error) for v in verdicts] == [("ok", 0), ("error", None)]
    assert not calc.needs_problem and not calc.resumable
    with pytest.raises(TypeError):
        Judge()  # abstract: a judge must implement name and judge


def test_labelling_core_does_not_import_dagster() -> None:
    code = ("import sys, prmforge.labeling.stages, prmforge.labeling.judges; "
            "assert 'dagster' not in sys.modules, 'dagster imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1000:]
