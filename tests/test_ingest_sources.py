"""Sources: bundled sample, world generator, incoming folder, dataset-hub ids, registry."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow as pa
import pytest

from prmforge.ingest import IngestSettings, SourceError, ingest_dataset, spec_for
from prmforge.names import InvalidNameError
from prmforge.registry import (
    RegistryError,
    add_dataset,
    builtin_entries,
    get_dataset,
    list_datasets,
    load_registry,
)
from prmforge.storage import Storage


def test_bundled_gsm8k_sample_is_clean_and_parsed() -> None:
    r = ingest_dataset(get_dataset("gsm8k-sample", "/nonexistent/registry.yaml"), IngestSettings())
    assert r.counts() == {"rows_read": 20, "accepted": 20, "quarantined": 0, "deduplicated": 0, "decontaminated": 0}
    first = r.accepted.to_pylist()[0]
    meta = json.loads(first["meta"])
    assert meta["calculator_annotations"] and meta["source_file"] == "gsm8k_sample.jsonl"
    assert first["answer"] == "22" and first["split"] == "train"
    assert len(set(r.accepted.column("problem_id").to_pylist())) == 20


def test_repo_registry_matches_builtin_entries() -> None:
    reg = load_registry()
    assert set(builtin_entries()) <= set(reg)
    assert reg["world-demo"].source == "world"


def test_world_source_keeps_the_world_meta() -> None:
    from prmforge.world import generate_problems, problem_from_meta

    spec = get_dataset("world-demo", "/nonexistent/registry.yaml")
    r = ingest_dataset(spec, IngestSettings(world_size=12, world_seed=3))
    assert r.conserved and r.accepted.num_rows == 12
    expected = generate_problems(12, seed=3)
    rows = r.accepted.to_pylist()
    assert [row["problem"] for row in rows] == [p.problem for p in expected]
    assert [row["answer"] for row in rows] == [p.answer for p in expected]
    rebuilt = problem_from_meta(json.loads(rows[0]["meta"]))
    assert rebuilt.problem == rows[0]["problem"] and rebuilt.answer == rows[0]["answer"]


def test_incoming_folder_all_formats(local_root: str) -> None:
    storage = Storage(local_root)
    folder = Path(storage.path("incoming", "drop"))
    folder.mkdir(parents=True)
    (folder / "a.jsonl").write_text(json.dumps({"problem": "A?", "answer": "1"}) + "\n")
    (folder / "b.json").write_text(json.dumps([{"problem": "B?", "answer": "2"}]))
    (folder / "c.csv").write_text("problem,answer\nC?,3\n")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"problem": ["D?"], "answer": ["4"]}), folder / "d.parquet")
    spec = spec_for("drop", "/nonexistent/registry.yaml", storage)  # not registered: implicit incoming
    assert spec.source == "incoming"
    r = ingest_dataset(spec, IngestSettings(), storage)
    assert r.accepted.column("problem").to_pylist() == ["A?", "B?", "C?", "D?"]
    assert r.accepted.column("source_row").to_pylist() == [0, 1, 2, 3]
    with pytest.raises(KeyError, match="nothere"):
        spec_for("nothere", "/nonexistent/registry.yaml", storage)


def test_dropped_world_records_keep_the_world_meta(local_root: str) -> None:
    """A world dataset exported to JSONL and dropped into incoming/ (adapter auto) still rebuilds for the oracle."""
    from prmforge.world import generate_problems, problem_from_meta

    storage = Storage(local_root)
    folder = Path(storage.path("incoming", "world-drop"))
    folder.mkdir(parents=True)
    problems = generate_problems(4, seed=9, difficulty="easy")
    lines = [json.dumps({"problem": p.problem, "answer": p.answer, "meta": p.meta}) for p in problems]
    (folder / "part-1.jsonl").write_text("\n".join(lines) + "\n")
    spec = spec_for("world-drop", "/nonexistent/registry.yaml", storage)
    assert (spec.source, spec.adapter) == ("incoming", "auto")
    r = ingest_dataset(spec, IngestSettings(), storage)
    assert r.accepted.num_rows == 4 and not r.quarantine.num_rows
    for row, p in zip(r.accepted.to_pylist(), problems, strict=True):
        meta = json.loads(row["meta"])
        assert "meta" not in meta and problem_from_meta(meta).problem == row["problem"] == p.problem


def test_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    spec = add_dataset("gone", str(tmp_path / "nope.jsonl"), path=tmp_path / "r.yaml")
    with pytest.raises(SourceError, match="'gone'.*does not exist"):
        ingest_dataset(spec, IngestSettings())


def test_hub_id_unreachable_fails_fast_naming_the_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    spec = add_dataset("hubby", "hub:someone/not-cached-dataset", path=tmp_path / "r.yaml")
    t0 = time.monotonic()
    with pytest.raises(SourceError) as err:
        ingest_dataset(spec, IngestSettings())
    assert time.monotonic() - t0 < 60  # offline mode: no network wait
    assert "someone/not-cached-dataset" in str(err.value) and "'hubby'" in str(err.value)


def test_hub_path_reads_through_datasets_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A packaged builder (``json``) needs no download: the hub path works end to end offline."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # restored after the test (the reader forces it too)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"question": f"Q{i}?", "answer": f"w\n#### {i}"}) + "\n" for i in range(3)))
    spec = add_dataset("hubjson", "hub:json", adapter="gsm8k", options={"data_files": str(data), "hub_split": "train"},
                       path=tmp_path / "r.yaml")
    r = ingest_dataset(spec, IngestSettings())
    assert r.accepted.column("answer").to_pylist() == ["0", "1", "2"]


def test_registry_add_list_get_and_validation(tmp_path: Path) -> None:
    path = tmp_path / "datasets.yaml"
    assert {s.key for s in list_datasets(path)} == {"world-demo", "gsm8k-sample"}  # no file: built-ins
    spec = add_dataset("my-math", "s3://bucket/math/", adapter="math", split="test",
                       columns={"problem": "question"}, path=path)
    assert get_dataset("my-math", path) == spec
    assert {s.key for s in list_datasets(path)} == {"world-demo", "gsm8k-sample", "my-math"}
    text = path.read_text()
    assert text.startswith("# prmforge dataset registry") and "my-math:" in text
    with pytest.raises(RegistryError, match="already registered"):
        add_dataset("my-math", "other.jsonl", path=path)
    add_dataset("my-math", "other.jsonl", path=path, overwrite=True)
    assert get_dataset("my-math", path).source == "other.jsonl"
    for bad in ["../etc", "Upper", "a/b", "", "x" * 65]:
        with pytest.raises((RegistryError, InvalidNameError)):
            add_dataset(bad, "f.jsonl", path=path)
    with pytest.raises(RegistryError, match="unsupported source"):
        add_dataset("web", "https://example.com/x.jsonl", path=path)
    with pytest.raises(RegistryError, match="column roles"):
        add_dataset("cols", "f.jsonl", columns={"questionz": "q"}, path=path)
    with pytest.raises(RegistryError, match="bundled"):
        add_dataset("b", "bundled:../secrets", path=path)
    with pytest.raises(RegistryError, match="split"):
        add_dataset("s", "f.jsonl", split="holdout", path=path)
    assert add_dataset("s", "f.jsonl", split="dev", path=path).split == "validation"
    with pytest.raises(KeyError, match="unknown-ds"):
        get_dataset("unknown-ds", path)
    path.write_text("datasets: [1, 2]\n")
    with pytest.raises(RegistryError, match="mapping"):
        load_registry(path)
