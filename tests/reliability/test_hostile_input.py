"""A corpus of broken and hostile seed files through a real ``seed_problems`` materialisation.

Every bad kind must land in quarantine with its reason, good rows beside
them must survive, and rows read = accepted + quarantined + deduplicated +
decontaminated, checked both from the stored tables and by the asset's own
``rows_conserved`` check.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from dagster import DagsterInstance, materialize

from prmforge.storage import Storage

BENCH_PROBLEM = "A benchmark problem: Kim has 12 shells and finds 30 more, how many shells does Kim have in all?"


def _corpus(folder: Path) -> dict[str, dict[str, int]]:
    """Write the corpus; return, per file, the quarantine reasons (and other outcomes) it must produce."""
    folder.mkdir()
    good = lambda i: json.dumps({"problem": f"Good problem {i}: what is {i} + {i}?", "answer": str(2 * i)})  # noqa: E731
    expect: dict[str, dict[str, int]] = {}

    (folder / "truncated.jsonl").write_text("\n".join([good(1), good(2), '{"problem": "Cut off mid-rec']))
    expect["truncated.jsonl"] = {"accepted": 2, "malformed_record": 1}

    (folder / "bad_utf8.jsonl").write_bytes(good(3).encode() + b"\n" + b'{"problem": "Caf\xe9 \xff\xfe?", "answer": "1"}')
    expect["bad_utf8.jsonl"] = {"accepted": 1, "invalid_utf8": 1}

    huge = "How many? " + "x" * (10 * 1024 * 1024)
    (folder / "huge.jsonl").write_text(json.dumps({"problem": huge, "answer": "1"}) + "\n" + good(4))
    expect["huge.jsonl"] = {"accepted": 1, "too_long": 1}

    rows = [{"problem": "Null answer problem?", "answer": None}, {"problem": "Numeric answer problem?", "answer": 42},
            {"problem": "Float answer problem?", "answer": 3.5}, {"problem": 17, "answer": "1"},
            {"problem": "Infinite answer?", "answer": float("inf")}, {"problem": "NaN answer?", "answer": float("nan")}]
    (folder / "answers.jsonl").write_text("\n".join(json.dumps(r) for r in rows))  # Infinity / NaN literals
    expect["answers.jsonl"] = {"accepted": 2, "missing_answer": 1, "non_string": 1, "unparseable_answer": 2}

    rows = [{"id": "q1", "problem": "Conflicting one?", "answer": "1"},
            {"id": "q1", "problem": "Conflicting one?", "answer": "2"},
            {"id": "q2", "problem": "Repeated two?", "answer": "5"},
            {"id": "q2", "problem": "Repeated two?", "answer": "5"}]
    (folder / "dupes.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    expect["dupes.jsonl"] = {"accepted": 1, "conflicting_answers": 2, "deduplicated": 1}

    (folder / "embedded.csv").write_text(
        'problem,answer\n"Line one\nline two, with a comma: what is 2+2?",4\n"Ann has ""3"" pens?",3\n'
        'too,many,fields\n')
    expect["embedded.csv"] = {"accepted": 2, "malformed_record": 1}

    pq.write_table(pa.table({"question_text": ["a", "b", "c"], "solution_value": [1, 2, 3]}),
                   folder / "wrong_schema.parquet")
    expect["wrong_schema.parquet"] = {"wrong_schema": 3}

    (folder / "empty.jsonl").write_bytes(b"")
    expect["empty.jsonl"] = {"empty_file": 1}

    (folder / "contaminated.jsonl").write_text(json.dumps({"problem": BENCH_PROBLEM, "answer": "42"}))
    expect["contaminated.jsonl"] = {"decontaminated": 1}
    return expect


def test_hostile_corpus_quarantined_and_conserved(local_root: str, tmp_path: Path, fault) -> None:
    from assets.seed import seed_problems
    from prmforge.registry import add_dataset
    from resources import build_resources
    from resources.storage import StorageResource

    expect = _corpus(tmp_path / "corpus")
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"problem": BENCH_PROBLEM}))
    registry = tmp_path / "datasets.yaml"
    add_dataset("hostile", str(tmp_path / "corpus"), adapter="generic", columns={"id": "id"}, path=registry)
    run_config = {"ops": {"seed_problems": {"config": {
        "registry_path": str(registry),
        "eval_benchmarks": [{"name": "bench", "path": str(bench), "mode": "exact", "column": "problem"}]}}}}
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("datasets", ["hostile"])
        res = materialize([seed_problems], partition_key="hostile", instance=instance, run_config=run_config,
                          resources=build_resources(storage=StorageResource(root=local_root)))
        assert res.success
        checks = {e.check_name: e for e in res.get_asset_check_evaluations()}
        assert checks["rows_conserved"].passed
        meta = {k: v.value for k, v in res.asset_materializations_for_node("seed_problems")[0].metadata.items()
                if k in ("rows_read", "accepted", "quarantined", "deduplicated", "decontaminated")}
    store = Storage(local_root)
    accepted = store.read_dataset("seed_problems", "hostile")
    quarantine = store.read_dataset("seed_problems_quarantine", "hostile")
    dropped = store.read_dataset("seed_problems_dropped", "hostile")

    def file_of(text: str | None, reason: str = "") -> str:
        # conflicting answers are reported per problem_id (rows of any file), not per file
        return next((f for f in expect if f in (text or "")), "dupes.jsonl" if reason == "conflicting_answers" else "?")

    got: dict[str, Counter] = {f: Counter() for f in expect}
    for q in quarantine.to_pylist():
        assert q["reason"] and q["detail"], q  # every quarantined row says why
        got[file_of(q["detail"], q["reason"])][q["reason"]] += 1
    for m in accepted.to_pylist():
        got[file_of(json.loads(m["meta"] or "{}").get("source_file", "") or m["meta"])]["accepted"] += 1
    for d in dropped.to_pylist():
        kind = "deduplicated" if d["kind"] == "duplicate" else "decontaminated"
        row_file = file_of(d["detail"]) if file_of(d["detail"]) != "?" else None
        got[row_file or ("dupes.jsonl" if kind == "deduplicated" else "contaminated.jsonl")][kind] += 1
    # Every bad kind is quarantined with its reason (checked per file; counts from the stored tables).
    expected_reasons = Counter()
    for exp in expect.values():
        expected_reasons.update({k: v for k, v in exp.items()
                                 if k not in ("accepted", "deduplicated", "decontaminated")})
    assert Counter(quarantine.column("reason").to_pylist()) == expected_reasons
    for f, exp in expect.items():
        assert {k: v for k, v in got[f].items() if v} == exp, (f, got[f])
    n_in = meta["rows_read"]
    n_expected = sum(sum(v.values()) for v in expect.values())
    assert n_in == n_expected
    assert n_in == accepted.num_rows + quarantine.num_rows + meta["deduplicated"] + meta["decontaminated"]
    assert meta["accepted"] == sum(v.get("accepted", 0) for v in expect.values()) == accepted.num_rows
    assert meta["deduplicated"] == 1 and meta["decontaminated"] == 1
    # The 10 MB problem is not copied whole into quarantine; a multi-line CSV cell survives intact.
    assert max(len(r or "") for r in quarantine.column("raw").to_pylist()) < 4096
    assert any("Line one\nline two" in p for p in accepted.column("problem").to_pylist())
    assert "42" in accepted.column("answer").to_pylist() and "3.5" in accepted.column("answer").to_pylist()
    for f, exp in expect.items():
        fault(f"hostile seed file `{f}`", sum(v for k, v in exp.items() if k != "accepted"),
              "bad rows quarantined with their reason, good rows kept; per-kind counts match",
              expected=dict(exp), quarantine_reasons=dict(sorted(
                  (r, c) for r, c in Counter(q["reason"] for q in quarantine.to_pylist()
                                             if file_of(q["detail"], q["reason"]) == f).items())))
    fault("whole hostile corpus (9 files) through a real `seed_problems` materialisation", 1,
          "rows in = accepted + quarantined + deduplicated + decontaminated; asset check rows_conserved passes",
          rows_in=n_in, accepted=accepted.num_rows, quarantined=quarantine.num_rows,
          deduplicated=meta["deduplicated"], decontaminated=meta["decontaminated"],
          rows_conserved_check=checks["rows_conserved"].passed)
