"""Dedupe within and across partitions; decontamination against evaluation benchmarks."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow as pa
import pytest

from prmforge.ingest import BenchmarkSpec, IngestSettings, SourceError, ingest_dataset
from prmforge.registry import DatasetSpec
from prmforge.storage import Storage

LONG = ("A school bus picks up eleven children at the first stop and then seven more children at "
        "the second stop before it reaches the school gate.")


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_exact_and_ngram_contamination_recorded_with_benchmark(tmp_path: Path) -> None:
    bench = tmp_path / "bench.json"  # ProcessBench layout: JSON array with a "problem" field
    bench.write_text(json.dumps([
        {"id": "b-0", "problem": "What is the sum of 17 and 25?", "steps": ["..."], "label": -1},
        {"id": "b-1", "problem": LONG + " How many children are on the bus?", "steps": [], "label": 0},
    ]))
    other = _jsonl(tmp_path / "other.jsonl", [{"question": "Completely unrelated twelve word problem text here ok?"}])
    seeds = _jsonl(tmp_path / "seeds.jsonl", [
        {"problem": "what is the SUM of 17 and 25 ?", "answer": "42"},       # exact after normalisation
        {"problem": "Puzzle: " + LONG + " How many seats are empty?", "answer": "3"},  # shares 13-gram
        {"problem": "A school bus picks up eleven children. How many?", "answer": "11"},  # short overlap: kept
        {"problem": "Completely unrelated twelve word problem text here ok?", "answer": "1"},  # exact, 2nd bench
    ])
    settings = IngestSettings(eval_benchmarks=[
        BenchmarkSpec(name="processbench-gsm8k", path=str(bench)),
        BenchmarkSpec(name="other", path=str(other)),
    ])
    r = ingest_dataset(DatasetSpec(key="s", source=str(seeds)), settings)
    assert r.conserved
    dropped = {d["source_row"]: d for d in r.dropped.to_pylist()}
    assert set(dropped) == {0, 1, 3}
    assert all(d["kind"] == "contaminated" for d in dropped.values())
    assert dropped[0]["matched"] == "processbench-gsm8k" and "exact" in dropped[0]["detail"]
    assert dropped[1]["matched"] == "processbench-gsm8k" and "13-gram" in dropped[1]["detail"]
    assert dropped[3]["matched"] == "other"
    assert r.accepted.column("source_row").to_pylist() == [2]
    assert r.contaminated_by == {"other": 1, "processbench-gsm8k": 2}
    assert r.counts()["decontaminated"] == 3

    # a shorter n-gram window catches the short overlap too
    r8 = ingest_dataset(DatasetSpec(key="s", source=str(seeds)), settings.model_copy(update={"ngram": 5}))
    assert r8.accepted.num_rows == 0


def test_missing_benchmark_is_an_error_not_a_silent_skip(tmp_path: Path) -> None:
    seeds = _jsonl(tmp_path / "s.jsonl", [{"problem": "P?", "answer": "1"}])
    settings = IngestSettings(eval_benchmarks=[BenchmarkSpec(name="pb", path=str(tmp_path / "missing.json"))])
    with pytest.raises(SourceError, match="'pb'"):
        ingest_dataset(DatasetSpec(key="s", source=str(seeds)), settings)


def test_stored_world_benchmark_is_used_in_exact_mode(local_root: str, tmp_path: Path) -> None:
    storage = Storage(local_root)
    storage.write_parquet(storage.path("datasets", "world_benchmark", "data.parquet"),
                          pa.table({"problem": ["Mia has 3 apples. Mia buys 2 more apples. How many apples?"]}))
    seeds = _jsonl(tmp_path / "s.jsonl", [
        {"problem": "Mia has 3 apples. Mia buys 2 more apples. How many apples?", "answer": "5"},
        {"problem": "Mia has 4 apples. Mia buys 2 more apples. How many apples?", "answer": "6"},
    ])
    r = ingest_dataset(DatasetSpec(key="s", source=str(seeds)), IngestSettings(ngram=3), storage)
    assert [d["matched"] for d in r.dropped.to_pylist()] == ["world_benchmark"]
    assert r.accepted.column("answer").to_pylist() == ["6"]  # templated twin is not contamination
    off = ingest_dataset(DatasetSpec(key="s", source=str(seeds)), IngestSettings(use_world_benchmark=False), storage)
    assert off.accepted.num_rows == 2


def test_dedupe_within_and_across_partitions(local_root: str, tmp_path: Path) -> None:
    storage = Storage(local_root)
    a = _jsonl(tmp_path / "a.jsonl", [{"problem": "Shared problem?", "answer": "1"},
                                       {"problem": "Only in A?", "answer": "2"},
                                       {"problem": "Only in A?", "answer": "2"}])
    b = _jsonl(tmp_path / "b.jsonl", [{"problem": "Shared   problem?", "answer": "1.0"},
                                       {"problem": "Only in B?", "answer": "3"}])
    ra = ingest_dataset(DatasetSpec(key="a", source=str(a)), IngestSettings(), storage)
    assert ra.counts()["deduplicated"] == 1 and ra.accepted.num_rows == 2
    storage.write_dataset("seed_problems", ra.accepted, "a")

    rb = ingest_dataset(DatasetSpec(key="b", source=str(b)), IngestSettings(), storage)
    assert rb.conserved and rb.accepted.column("problem").to_pylist() == ["Only in B?"]
    (dup,) = rb.dropped.to_pylist()
    assert dup["kind"] == "duplicate" and dup["matched"].startswith("a:") and dup["source_row"] == 0
    assert "differ" not in dup["detail"]  # "1.0" normalises to "1"
    storage.write_dataset("seed_problems", rb.accepted, "b")

    c = _jsonl(tmp_path / "c.jsonl", [{"problem": "Only in B?", "answer": "4"}])
    (dup_c,) = ingest_dataset(DatasetSpec(key="c", source=str(c)), IngestSettings(), storage).dropped.to_pylist()
    assert dup_c["matched"].startswith("b:") and "answers differ: '3' there, '4' here" in dup_c["detail"]

    # re-ingesting A is stable: B no longer holds the shared problem, so A keeps it
    again = ingest_dataset(DatasetSpec(key="a", source=str(a)), IngestSettings(), storage)
    assert again.accepted.equals(ra.accepted)


def _processbench(shared_data: Path) -> IngestSettings:
    pb = shared_data / "processbench"
    return IngestSettings(eval_benchmarks=[BenchmarkSpec(name="processbench-gsm8k", path=str(pb / "gsm8k.json")),
                                           BenchmarkSpec(name="processbench-math", path=str(pb / "math.json"))])


def test_shared_gsm8k_test_against_processbench(shared_data: Path) -> None:
    """Real data: GSM8K test vs ProcessBench (its gsm8k subset was built from GSM8K test problems)."""
    t0 = time.perf_counter()
    r = ingest_dataset(DatasetSpec(key="gsm8k-test", source=str(shared_data / "gsm8k" / "test.jsonl"),
                                   adapter="gsm8k", split="test"), _processbench(shared_data))
    elapsed = time.perf_counter() - t0
    bench = json.loads((shared_data / "processbench" / "gsm8k.json").read_text())
    distinct = len({" ".join(p["problem"].split()) for p in bench})
    counts = r.counts()
    ngram_hits = sum(1 for d in r.dropped.to_pylist() if "gram" in (d["detail"] or ""))
    print(f"GSM8K test vs ProcessBench: {counts}, by benchmark {r.contaminated_by}, by 13-gram {ngram_hits}, "
          f"distinct ProcessBench gsm8k problems {distinct}, {elapsed:.2f} s")
    assert r.conserved and counts["rows_read"] == 1319
    # every distinct ProcessBench gsm8k problem comes from GSM8K test, so each removes at least one row
    assert counts["decontaminated"] >= distinct
    assert r.contaminated_by.get("processbench-gsm8k", 0) >= distinct


def test_shared_gsm8k_train_parses_cleanly(shared_data: Path) -> None:
    t0 = time.perf_counter()
    r = ingest_dataset(DatasetSpec(key="gsm8k-train", source=str(shared_data / "gsm8k" / "train.jsonl"),
                                   adapter="gsm8k"), _processbench(shared_data))
    print(f"GSM8K train vs ProcessBench: {r.counts()} by benchmark {r.contaminated_by} reasons {r.reasons}, "
          f"{time.perf_counter() - t0:.2f} s")
    assert r.conserved and r.rows_read == 7473
    assert r.quarantined_count == 0  # the real file is clean: every row parses
    assert r.decontaminated_count < 20  # train and test are disjoint up to near-duplicates
