"""Judge and engine faults from the ``openai`` backend: retried, then recorded as failures, never as labels.

A real loopback OpenAI-compatible server answers honestly (``rel_world.brain``)
except where a fault is scripted: timeouts, HTTP 500/503, HTML garbage and a
truncated JSON body. Transient faults (then a good answer) must be retried to
the right label; persistent ones must end as ``error`` rows that consensus
excludes.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
from rel_helpers import LoopbackLLM
from rel_world import brain, judge_rows, mc_rows, world_rollouts

from prmforge.engines.openai import OpenAIEngine
from prmforge.labeling.consensus import build_consensus
from prmforge.labeling.mc import EngineValue, MCItem, default_grader, run_search
from prmforge.labeling.settings import JudgeSettings
from resources.judge import JudgeResource

RETRIES = 2
FAULTS = ["timeout", "500", "503", "garbage", "truncated"]


def _marker(r) -> str:
    return r.problem.split(".")[0]  # the problem's first sentence: unique per problem here


def test_judge_faults_retried_then_excluded(fault) -> None:
    rollouts = world_rollouts(20, seed=11)
    respond = brain({r.problem: r.gold for r in rollouts})
    markers = [_marker(r) for r in rollouts]
    assert len(set(markers)) == len(markers)
    with LoopbackLLM(respond, timeout_sleep_s=1.5) as server:
        transient, persistent = {}, {}
        for i, r in enumerate(rollouts[:10]):  # each fault once, then a good answer
            server.faults[_marker(r)] = [FAULTS[i % len(FAULTS)]]
            transient[r.rollout_id] = FAULTS[i % len(FAULTS)]
        for i, r in enumerate(rollouts[10:15]):  # every attempt fails
            server.always[_marker(r)] = FAULTS[i % len(FAULTS)]
            persistent[r.rollout_id] = FAULTS[i % len(FAULTS)]
        judge = JudgeResource(kind="llm", backend="openai", model="judge", base_url=server.base_url,
                              timeout_s=0.5, max_retries=RETRIES, max_concurrency=8)
        with judge.make() as j:
            verdicts = j.judge([r.problem for r in rollouts], [r.steps for r in rollouts], JudgeSettings(max_tokens=64))
        attempts = Counter()
        for req in server.requests:
            for r in rollouts:
                if _marker(r) in req["prompt"]:
                    attempts[r.rollout_id] += 1
    by_id = {r.rollout_id: (r, v) for r, v in zip(rollouts, verdicts, strict=True)}
    for rid, kind in transient.items():
        r, v = by_id[rid]
        assert attempts[rid] == 2, (kind, attempts[rid])  # retried once
        assert v.status == "ok" and v.first_error == r.true_first_error, (kind, v)
    for rid, kind in persistent.items():
        _, v = by_id[rid]
        assert attempts[rid] == RETRIES + 1, (kind, attempts[rid])
        assert v.status == "error" and v.first_error is None, (kind, v)
    clean = [rid for rid in by_id if rid not in transient and rid not in persistent]
    assert all(by_id[rid][1].status == "ok" and attempts[rid] == 1 for rid in clean)

    # Consensus with an honest MC: failed verdicts are excluded, never labels.
    mc = [{"rollout_id": r.rollout_id, "problem_id": r.problem_id, "dataset": "world-rel", "prompt": r.prompt,
           "steps": r.steps, "status": "ok", "first_error": r.true_first_error, "mc_mode": "oracle", "k": 0}
          for r in rollouts]
    res = build_consensus(pa.Table.from_pylist(mc), pa.Table.from_pylist(judge_rows(rollouts, verdicts)), "llm")
    kept = set(res.table.column("rollout_id").to_pylist())
    assert not kept & set(persistent)
    assert kept == set(by_id) - set(persistent)
    assert res.breakdown["judge_unparsed"] == len(persistent)
    fault("openai-backend judge: timeout / HTTP 500 / 503 / HTML garbage / truncated JSON, once then a good "
          "answer (loopback server)", len(transient), "retried (2 attempts each), verdict equals the true first "
          "error, kept by consensus", kinds=sorted(set(transient.values())),
          attempts=sorted(attempts[r] for r in transient), verdicts_correct=len(transient))
    fault("openai-backend judge: the same faults on every attempt", len(persistent) * (RETRIES + 1),
          f"each prompt tried 1 + {RETRIES} retries, then recorded as status=error with no first_error; "
          "consensus excludes them (judge_unparsed)", prompts=len(persistent),
          attempts_per_prompt=sorted(set(attempts[r] for r in persistent)),
          recorded_as_error=sum(by_id[r][1].status == "error" for r in persistent),
          kept_by_consensus=len(kept & set(persistent)), consensus_kept=res.kept, consensus_total=res.total)


def test_policy_engine_faults_in_mc_never_become_labels(fault) -> None:
    rollouts = world_rollouts(12, seed=12)
    golds = {r.problem: r.gold for r in rollouts}
    wrong = [r for r in rollouts if not r.final_correct]
    with LoopbackLLM(brain(golds), timeout_sleep_s=1.5) as server:
        broken = wrong[:3]
        for i, r in enumerate(broken):
            server.always[_marker(r)] = FAULTS[i % len(FAULTS)]
        flaky = wrong[3:6]
        for i, r in enumerate(flaky):
            server.faults[_marker(r)] = [FAULTS[(i + 3) % len(FAULTS)]]
        engine = OpenAIEngine("policy", base_url=server.base_url, timeout_s=0.5, max_retries=RETRIES,
                              max_concurrency=8)
        value = EngineValue(engine, default_grader(), k=2, max_tokens=16, seed=0, separator="\n",
                            batch_prefixes=32)
        items = [MCItem(r.rollout_id, r.prompt, r.steps, r.gold, r.final_correct) for r in rollouts]
        results = run_search(items, "per_step", value)
        served = dict(server.served)
    by_id = {r.rollout_id: (r, m) for r, m in zip(rollouts, results, strict=True)}
    for r in broken:
        m = by_id[r.rollout_id][1]
        assert m.status == "error" and m.labels == [], m
    for r in rollouts:
        if r in broken:
            continue
        m = by_id[r.rollout_id][1]
        assert m.status == "ok" and m.first_error == r.true_first_error, (r.rollout_id, m)
    judge = [{"rollout_id": r.rollout_id, "status": "ok", "first_error": r.true_first_error} for r in rollouts]
    res = build_consensus(pa.Table.from_pylist(mc_rows(rollouts, results, "per_step", 2)),
                          pa.Table.from_pylist(judge), "oracle")
    kept = set(res.table.column("rollout_id").to_pylist())
    assert not kept & {r.rollout_id for r in broken}
    assert res.breakdown["mc_failed"] == len(broken)
    fault("openai-backend policy engine in MC labelling: faults on every attempt for 3 rollouts, once for 3 more",
          sum(v for k, v in served.items() if k != "ok"), "transient faults retried to the true first error; "
          "persistent ones give MC status=error with no labels and consensus drops them (mc_failed)",
          responses_served=served, mc_errors=sum(m.status == "error" for m in results),
          mc_correct=sum(m.status == "ok" and m.first_error == r.true_first_error
                         for r, m in zip(rollouts, results, strict=True)),
          kept_by_consensus=res.kept, failed_rollouts_kept=len(kept & {r.rollout_id for r in broken}))
