"""Ingestion of one dataset: read → extract → validate → dedupe → decontaminate.

Every record read ends in exactly one of four places, which the
``rows_conserved`` check verifies::

    rows read = accepted + quarantined + deduplicated + decontaminated

* accepted → ``seed_problems``
* quarantined (bad content, with a reason) → ``seed_problems_quarantine``
* deduplicated and decontaminated → ``seed_problems_dropped`` (``kind``
  ``duplicate`` / ``contaminated``, with what they matched)

A file-level failure (empty, unreadable, not JSON/Parquet) counts as one
record read and one quarantine row with ``source_row = -1``.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from prmforge.ingest.adapters import Extracted, RecordError, extract
from prmforge.ingest.decontam import BenchmarkIndex, build_index
from prmforge.ingest.normalize import AnswerError, clean_text, normalize_answer, problem_id, text_key
from prmforge.ingest.readers import (
    FILE_ROW,
    RawRecord,
    SourceError,
    has_surrogates,
    read_files,
    read_hub,
    read_world,
    shown,
)
from prmforge.ingest.settings import ALLOWED_SPLITS, SPLIT_ALIASES, IngestSettings
from prmforge.registry import DatasetSpec, bundled_path
from prmforge.schemas import SEED_DROPPED, SEED_PROBLEMS, SEED_QUARANTINE

SEED_DATASET = "seed_problems"
WORLD_BENCHMARK_DATASET = "world_benchmark"

QUARANTINE_REASONS = {
    "missing_problem": "problem column absent, null, or only whitespace",
    "missing_answer": "answer column absent, null, or only whitespace",
    "non_string": "problem is not a string, or answer is neither a string nor a finite number",
    "unparseable_answer": "no '#### x' line (GSM8K), no \\boxed{} (MATH), unbalanced braces, NaN/inf",
    "too_long": "problem or answer longer than max_problem_chars / max_answer_chars",
    "invalid_utf8": "bytes that are not UTF-8 (or lone surrogate escapes)",
    "conflicting_answers": "the same problem_id appears with different answers (all its rows)",
    "invalid_split": f"split not in {list(ALLOWED_SPLITS)} (aliases {sorted(SPLIT_ALIASES)} are mapped)",
    "malformed_record": "a JSONL line that is not a JSON object (e.g. truncated), a CSV row with a wrong field count",
    "malformed_file": "a file that is not valid JSON/Parquet, has an unknown format, or holds no list of records",
    "wrong_schema": "a Parquet/CSV file without the columns the adapter needs (every row of it)",
    "empty_file": "a file with no records",
}


@dataclass
class IngestResult:
    """The three output tables of one dataset and the counts that tie them together."""

    dataset: str
    accepted: pa.Table
    quarantine: pa.Table
    dropped: pa.Table
    rows_read: int
    reasons: dict[str, int] = field(default_factory=dict)
    contaminated_by: dict[str, int] = field(default_factory=dict)

    @property
    def accepted_count(self) -> int:
        return self.accepted.num_rows

    @property
    def quarantined_count(self) -> int:
        return self.quarantine.num_rows

    def _kind(self, kind: str) -> int:
        return sum(1 for k in self.dropped.column("kind").to_pylist() if k == kind)

    @property
    def deduplicated_count(self) -> int:
        return self._kind("duplicate")

    @property
    def decontaminated_count(self) -> int:
        return self._kind("contaminated")

    @property
    def conserved(self) -> bool:
        """rows read = accepted + quarantined + deduplicated + decontaminated."""
        total = self.accepted_count + self.quarantined_count + self.deduplicated_count + self.decontaminated_count
        return total == self.rows_read and self.dropped.num_rows == self.deduplicated_count + self.decontaminated_count

    def counts(self) -> dict[str, int]:
        return {
            "rows_read": self.rows_read,
            "accepted": self.accepted_count,
            "quarantined": self.quarantined_count,
            "deduplicated": self.deduplicated_count,
            "decontaminated": self.decontaminated_count,
        }


@dataclass
class _Candidate:
    source_row: int
    problem: str
    answer: str
    split: str
    meta: str
    pid: str
    raw: str


class _Collector:
    """Accumulates the three tables' rows while counting what was read."""

    def __init__(self, dataset: str, settings: IngestSettings) -> None:
        self.dataset = dataset
        self.settings = settings
        self.rows_read = 0
        self.quarantine: list[dict[str, Any]] = []
        self.dropped: list[dict[str, Any]] = []

    def quarantine_row(self, source_row: int, reason: str, detail: str, raw: str | None) -> None:
        self.quarantine.append({"dataset": self.dataset, "source_row": source_row, "reason": reason,
                                "detail": shown(detail, 1000), "raw": shown(raw, self.settings.max_raw_chars)
                                if raw is not None else None})

    def drop(self, c: _Candidate, kind: str, matched: str, detail: str) -> None:
        self.dropped.append({"problem_id": c.pid, "dataset": self.dataset, "source_row": c.source_row, "kind": kind,
                             "matched": matched, "detail": detail})


def column_check(spec: DatasetSpec) -> Any:
    """A function telling whether a file's columns can feed ``spec``'s adapter (None = yes)."""
    cols = spec.columns

    def needs(adapter: str) -> list[list[str]]:
        if adapter == "gsm8k":
            return [[cols.get("problem", "question"), cols.get("answer", "answer")]]
        if adapter == "math":
            p = cols.get("problem", "problem")
            return [[p, cols.get("answer", "answer")], [p, cols.get("solution", "solution")]]
        return [[cols.get("problem", "problem"), cols.get("answer", "answer")]]

    options = needs(spec.adapter) if spec.adapter != "auto" else needs("gsm8k") + needs("math") + needs("generic")

    def check(columns: list[str]) -> str | None:
        have = set(columns)
        if any(all(c in have for c in req) for req in options):
            return None
        return f"file has columns {sorted(have)[:20]}; adapter {spec.adapter!r} needs one of {options}"

    return check


def iter_source(spec: DatasetSpec, settings: IngestSettings, storage: Any = None) -> Iterator[RawRecord]:
    """Raw records of ``spec``'s source (raises :class:`SourceError` if it is unreachable)."""
    what = f"dataset {spec.key!r} (source {spec.source!r})"
    kind = spec.kind
    opts = spec.options
    if kind == "world":
        yield from read_world(int(opts.get("size", settings.world_size)), int(opts.get("seed", settings.world_seed)),
                              str(opts.get("difficulty", settings.world_difficulty)), what)
    elif kind == "hub":
        yield from read_hub(spec.source.split(":", 1)[1], opts, spec.split, what)
    else:
        if kind == "bundled":
            url = str(bundled_path(spec))
        elif kind == "incoming":
            if storage is None:
                raise SourceError(f"{what}: the incoming source needs a storage root")
            url = storage.url("incoming", spec.key)
        else:
            url = spec.source
        yield from read_files(url, spec.format, opts, column_check(spec), settings.max_raw_chars, what)


def _split(value: Any, default: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        value = default
    s = str(value).strip().lower()
    s = SPLIT_ALIASES.get(s, s)
    if s not in ALLOWED_SPLITS:
        raise RecordError("invalid_split", f"split {value!r} not in {list(ALLOWED_SPLITS)}")
    return s


def _validate(ex: Extracted, spec: DatasetSpec, settings: IngestSettings) -> tuple[str, str, str]:
    """(problem, answer, split) normalised, or :class:`RecordError`."""
    p = ex.problem
    if p is None:
        raise RecordError("missing_problem", "problem is null")
    if not isinstance(p, str):
        raise RecordError("non_string", f"problem is {type(p).__name__}: {str(p)[:80]!r}")
    if has_surrogates(p):
        raise RecordError("invalid_utf8", "problem holds bytes that are not UTF-8")
    problem = clean_text(p)
    if not problem:
        raise RecordError("missing_problem", "problem is empty")
    if len(problem) > settings.max_problem_chars:
        raise RecordError("too_long", f"problem has {len(problem)} chars > {settings.max_problem_chars}")
    a = ex.answer
    if a is None or (isinstance(a, str) and not a.strip()):
        raise RecordError("missing_answer", "answer is null or empty")
    if isinstance(a, bool) or not isinstance(a, str | int | float):
        raise RecordError("non_string", f"answer is {type(a).__name__}: {str(a)[:80]!r}")
    if isinstance(a, str) and has_surrogates(a):
        raise RecordError("invalid_utf8", "answer holds bytes that are not UTF-8")
    try:
        answer = normalize_answer(a)
    except AnswerError as exc:
        raise RecordError("unparseable_answer", str(exc)) from exc
    if len(answer) > settings.max_answer_chars:
        raise RecordError("too_long", f"answer has {len(answer)} chars > {settings.max_answer_chars}")
    return problem, answer, _split(ex.split, spec.split)


def _raw_of(rec: RawRecord) -> str:
    if rec.raw is not None:
        return rec.raw
    return json.dumps(rec.record, default=str, ensure_ascii=False)


def _meta_json(meta: dict[str, Any], rec: RawRecord) -> str:
    meta = dict(meta)
    if rec.file is not None:
        meta["source_file"] = rec.file
        meta["file_row"] = rec.file_row
    return json.dumps(meta, default=str, ensure_ascii=False, sort_keys=True)


def _other_partitions(storage: Any, key: str) -> dict[str, tuple[str, str, str]]:
    """text key → (partition, problem_id, answer) of problems accepted in other stored partitions."""
    seen: dict[str, tuple[str, str, str]] = {}
    for part in storage.list_partitions(SEED_DATASET):
        if part == key:
            continue
        table = storage.read_dataset(SEED_DATASET, part)
        for pid, text, answer in zip(table.column("problem_id").to_pylist(), table.column("problem").to_pylist(),
                                     table.column("answer").to_pylist(), strict=True):
            seen.setdefault(text_key(text), (part, pid, answer))
    return seen


def _world_benchmark(storage: Any) -> list[str] | None:
    if storage is None or not storage.dataset_exists(WORLD_BENCHMARK_DATASET):
        return None
    table = storage.read_dataset(WORLD_BENCHMARK_DATASET)
    if "problem" not in table.column_names:
        return None
    return [t for t in table.column("problem").to_pylist() if isinstance(t, str)]


def benchmark_index(settings: IngestSettings, storage: Any = None) -> BenchmarkIndex:
    """The decontamination index: configured benchmarks plus the stored world benchmark if any."""
    extra = {}
    if settings.use_world_benchmark:
        texts = _world_benchmark(storage)
        if texts:
            extra[WORLD_BENCHMARK_DATASET] = (texts, settings.world_benchmark_mode)
    return build_index(settings.eval_benchmarks, settings.ngram, extra)


def ingest_records(
    spec: DatasetSpec,
    records: Iterator[RawRecord],
    settings: IngestSettings,
    index: BenchmarkIndex | None = None,
    others: dict[str, tuple[str, str, str]] | None = None,
) -> IngestResult:
    """The pure core: raw records → :class:`IngestResult` (no storage access)."""
    col = _Collector(spec.key, settings)
    adapter, columns = spec.adapter, spec.columns
    candidates: list[_Candidate] = []
    for source_row, rec in enumerate(records):
        col.rows_read += 1
        where = f"{rec.file}#{rec.file_row}: " if rec.file and rec.file_row != FILE_ROW else (
            f"{rec.file}: " if rec.file else "")
        row_id = FILE_ROW if rec.file_row == FILE_ROW else source_row
        if rec.error is not None:
            col.quarantine_row(row_id, rec.error[0], where + rec.error[1], rec.raw)
            continue
        try:
            ex = extract(rec.record, adapter, columns)
            problem, answer, split = _validate(ex, spec, settings)
            meta = _meta_json(ex.meta, rec)
            if has_surrogates(meta):
                raise RecordError("invalid_utf8", "a metadata column holds bytes that are not UTF-8")
        except RecordError as exc:
            col.quarantine_row(row_id, exc.reason, where + exc.detail, _raw_of(rec))
            continue
        candidates.append(_Candidate(source_row, problem, answer, split, meta, problem_id(problem, spec.key),
                                     _raw_of(rec)))

    # Same id (same normalised text) with different answers: nobody knows which is right.
    answers: dict[str, set[str]] = defaultdict(set)
    rows_of: dict[str, list[int]] = defaultdict(list)
    for c in candidates:
        answers[c.pid].add(c.answer)
        rows_of[c.pid].append(c.source_row)
    kept: list[_Candidate] = []
    first: dict[str, _Candidate] = {}
    for c in candidates:
        if len(answers[c.pid]) > 1:
            col.quarantine_row(c.source_row, "conflicting_answers",
                               f"problem_id {c.pid} has answers {sorted(answers[c.pid])[:5]} at rows "
                               f"{rows_of[c.pid][:10]}", c.raw)
        elif c.pid in first:
            col.drop(c, "duplicate", c.pid, f"same problem as source_row {first[c.pid].source_row}")
        else:
            first[c.pid] = c
            kept.append(c)

    contaminated_by: Counter[str] = Counter()
    accepted: list[_Candidate] = []
    for c in kept:
        hit = index.match(c.problem) if index else None
        if hit:
            col.drop(c, "contaminated", hit[0], hit[1][:500])
            contaminated_by[hit[0]] += 1
            continue
        other = (others or {}).get(text_key(c.problem))
        if other:
            detail = f"same problem already in partition {other[0]!r}"
            if other[2] != c.answer:  # worth a look: one of the two sources has a wrong answer
                detail += f"; answers differ: {other[2]!r} there, {c.answer!r} here"
            col.drop(c, "duplicate", f"{other[0]}:{other[1]}", detail)
            continue
        accepted.append(c)

    accepted_table = pa.Table.from_pylist(
        [{"problem_id": c.pid, "dataset": spec.key, "problem": c.problem, "answer": c.answer, "split": c.split,
          "source_row": c.source_row, "meta": c.meta} for c in accepted],
        schema=SEED_PROBLEMS,
    )
    quarantine = pa.Table.from_pylist(col.quarantine, schema=SEED_QUARANTINE)
    dropped = pa.Table.from_pylist(col.dropped, schema=SEED_DROPPED)
    return IngestResult(
        dataset=spec.key,
        accepted=accepted_table,
        quarantine=quarantine,
        dropped=dropped,
        rows_read=col.rows_read,
        reasons=dict(sorted(Counter(r["reason"] for r in col.quarantine).items())),
        contaminated_by=dict(sorted(contaminated_by.items())),
    )


def ingest_dataset(spec: DatasetSpec, settings: IngestSettings | None = None, storage: Any = None) -> IngestResult:
    """Ingest one registry entry.

    ``storage`` (a :class:`prmforge.storage.Storage`) is needed for the
    ``incoming`` source, for dedupe across the partitions already stored and
    for the stored world benchmark; without it those steps are skipped.
    Raises :class:`SourceError` only when the source or a configured
    benchmark cannot be read at all.
    """
    settings = settings or IngestSettings()
    index = benchmark_index(settings, storage)
    others = _other_partitions(storage, spec.key) if storage is not None and settings.dedupe_across_partitions else None
    return ingest_records(spec, iter_source(spec, settings, storage), settings, index, others)


def spec_for(key: str, registry_path: str | None = None, storage: Any = None) -> DatasetSpec:
    """The registry entry for ``key``, or an implicit ``incoming`` entry if files were dropped for it."""
    from prmforge.registry import get_dataset, incoming_spec

    try:
        return get_dataset(key, registry_path)
    except KeyError:
        if storage is not None and storage.exists(storage.path("incoming", key)):
            return incoming_spec(key, read_manifest(storage, key))
        raise


def read_manifest(storage: Any, key: str) -> str | None:
    """The text of ``incoming/<key>/_dataset.yaml``, or None when the folder has none."""
    from prmforge.registry import MANIFEST

    path = storage.path("incoming", key, MANIFEST)
    return storage.read_bytes(path).decode("utf-8") if storage.exists(path) else None
