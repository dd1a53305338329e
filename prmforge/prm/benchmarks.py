"""Load ProcessBench-format benchmarks from any configured source.

Sources (one string each):

* ``world`` — the held-out world benchmark table (``world_benchmark`` dataset);
* a local ``.json``/``.jsonl`` file or a folder of them (subset = file stem), e.g.
  the real ProcessBench files;
* an ``s3://``/``file://`` URI of such a file or a ``.parquet`` file;
* ``hf:<hub id>[:subset,subset]`` — a hub dataset via ``datasets`` (imported lazily;
  offline it fails with a clear error rather than hanging).

Rows missing a field, with an out-of-range label or no steps are counted as
rejected with a reason, never dropped silently.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from prmforge.prm.metrics import Sample


class BenchmarkSourceError(RuntimeError):
    """A benchmark source could not be read."""


@dataclass
class LoadedBenchmark:
    samples: list[Sample]
    rejected: dict[str, int] = field(default_factory=dict)


def _to_sample(row: dict, subset: str, index: int, rejected: dict[str, int]) -> Sample | None:
    def reject(reason: str) -> None:
        rejected[reason] = rejected.get(reason, 0) + 1

    steps = row.get("steps")
    if not isinstance(steps, list | tuple) or not steps or not all(isinstance(s, str) for s in steps):
        reject("bad_steps")
        return None
    try:
        label = int(row.get("label"))
    except (TypeError, ValueError):
        reject("bad_label")
        return None
    if not -1 <= label < len(steps):
        reject("label_out_of_range")
        return None
    problem = row.get("problem")
    if not isinstance(problem, str) or not problem.strip():
        reject("bad_problem")
        return None
    sid = str(row.get("id") or f"{subset}-{index}")
    return Sample(id=sid, subset=subset, steps=list(steps), label=label,
                  final_answer_correct=bool(row.get("final_answer_correct", label < 0)),
                  group=str(row.get("problem_id") or ""), scores=[], problem=problem)


def samples_from_rows(rows: Iterable[dict], subset: str) -> LoadedBenchmark:
    rejected: dict[str, int] = {}
    out = [s for i, r in enumerate(rows) if (s := _to_sample(r, subset, i, rejected)) is not None]
    return LoadedBenchmark(out, rejected)


def samples_from_table(table: pa.Table, subset: str = "world") -> LoadedBenchmark:
    """World benchmark table (``id, problem, steps, label, final_answer_correct, problem_id, ...``)."""
    return samples_from_rows(table.to_pylist(), subset)


def _rows_from_bytes(data: bytes, name: str) -> list[dict]:
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(data)).to_pylist()
    text = data.decode("utf-8")
    if name.endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    obj = json.loads(text)
    if isinstance(obj, dict):  # {"subset": [...]} or {"data": [...]}
        obj = obj.get("data", obj.get("rows", []))
    if not isinstance(obj, list):
        raise BenchmarkSourceError(f"{name}: expected a JSON list of samples")
    return obj


def _stem(name: str) -> str:
    base = name.rstrip("/").rsplit("/", 1)[-1]
    for ext in (".jsonl", ".json", ".parquet"):
        if base.endswith(ext):
            return base[: -len(ext)]
    return base


def load_source(source: str, world_table: pa.Table | None = None) -> LoadedBenchmark:
    """Samples of one benchmark source (see the module docstring for the forms)."""
    if source == "world":
        if world_table is None:
            raise BenchmarkSourceError("source 'world' needs the world_benchmark table")
        return samples_from_table(world_table, "world")
    if source.startswith("hf:"):
        return _load_hub(source[3:])
    if source.startswith(("s3://", "s3a://", "file://")):
        import fsspec

        from prmforge.env import s3_options_from_env

        opts = s3_options_from_env() if source.startswith("s3") else {}
        try:
            fs, path = fsspec.core.url_to_fs(source, **opts)
            files = sorted(p for p in fs.find(path) if p.endswith((".json", ".jsonl", ".parquet"))) \
                if fs.isdir(path) else [path]
            merged = LoadedBenchmark([])
            for f in files:
                part = samples_from_rows(_rows_from_bytes(fs.cat_file(f), f), _stem(f))
                merged.samples += part.samples
                for k, v in part.rejected.items():
                    merged.rejected[k] = merged.rejected.get(k, 0) + v
            return merged
        except FileNotFoundError as exc:
            raise BenchmarkSourceError(f"benchmark {source} does not exist") from exc
    path = Path(source).expanduser()
    if not path.exists():
        raise BenchmarkSourceError(f"benchmark source {source!r} is not 'world', hf:<id>, a URI or an existing path")
    files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl", ".parquet")) if path.is_dir() \
        else [path]
    merged = LoadedBenchmark([])
    for f in files:
        part = samples_from_rows(_rows_from_bytes(f.read_bytes(), f.name), _stem(f.name))
        merged.samples += part.samples
        for k, v in part.rejected.items():
            merged.rejected[k] = merged.rejected.get(k, 0) + v
    return merged


def _load_hub(spec: str) -> LoadedBenchmark:
    hub_id, _, subsets = spec.partition(":")
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        raise BenchmarkSourceError("the 'datasets' package is needed for hf: benchmark sources") from exc
    try:
        names = [s for s in subsets.split(",") if s] or list(datasets.get_dataset_split_names(hub_id))
        merged = LoadedBenchmark([])
        for name in names:
            ds = datasets.load_dataset(hub_id, split=name)
            part = samples_from_rows(ds.to_list(), name)
            merged.samples += part.samples
            for k, v in part.rejected.items():
                merged.rejected[k] = merged.rejected.get(k, 0) + v
        return merged
    except Exception as exc:
        raise BenchmarkSourceError(
            f"could not load hub dataset {hub_id!r} ({type(exc).__name__}: {exc}); the hub is unreachable "
            "offline: download the files once and configure their path or s3 URI instead"
        ) from exc
