"""ProcessBench-format loading from every source kind, with rejected rows counted."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from prm_helpers import world_rows

from prmforge.prm.benchmarks import BenchmarkSourceError, load_source


def test_real_processbench_files(shared_data: Path) -> None:
    loaded = load_source(str(shared_data / "processbench"))
    subsets = {s.subset for s in loaded.samples}
    assert {"gsm8k", "math"} <= subsets
    raw = json.loads((shared_data / "processbench" / "gsm8k.json").read_text())
    gsm = [s for s in loaded.samples if s.subset == "gsm8k"]
    assert len(gsm) + sum(loaded.rejected.values()) >= len(raw) and len(gsm) > 0.95 * len(raw)
    first = next(s for s in gsm if s.id == raw[0]["id"])
    assert first.steps == raw[0]["steps"] and first.label == raw[0]["label"]


def test_world_table_and_bad_rows() -> None:
    _, bench = world_rows(6, seed=4, split="heldout")
    bad = [{**bench[0], "id": "x1", "label": 99}, {**bench[0], "id": "x2", "steps": []},
           {**bench[0], "id": "x3", "label": None}]
    loaded = load_source("world", pa.Table.from_pylist(bench + bad))
    assert len(loaded.samples) == 6 and {s.subset for s in loaded.samples} == {"world"}
    assert loaded.rejected == {"label_out_of_range": 1, "bad_steps": 1, "bad_label": 1}
    assert loaded.samples[0].group == bench[0]["problem_id"]
    with pytest.raises(BenchmarkSourceError):
        load_source("world")


def test_s3_json_and_parquet(s3_root: str) -> None:
    from prmforge.storage import Storage

    _, bench = world_rows(4, seed=5, split="heldout")
    st = Storage(s3_root)
    st.write_bytes_atomic(st.path("bench", "tiny.json"), json.dumps(bench).encode())
    st.write_parquet(st.path("bench", "more.parquet"), pa.Table.from_pylist(bench))
    loaded = load_source(st.url("bench"))
    assert sorted({s.subset for s in loaded.samples}) == ["more", "tiny"] and len(loaded.samples) == 8
    assert len(load_source(st.url("bench", "tiny.json")).samples) == 4


def test_hub_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(BenchmarkSourceError, match="unreachable offline"):
        load_source("hf:Qwen/ProcessBench:gsm8k")
    with pytest.raises(BenchmarkSourceError):
        load_source("/no/such/benchmark.json")
