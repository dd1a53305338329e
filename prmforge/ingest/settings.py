"""Ingestion settings (``demo`` defaults; profiles override under the ``ingest`` stage)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

ALLOWED_SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"val": "validation", "valid": "validation", "dev": "validation", "eval": "test"}


class BenchmarkSpec(BaseModel):
    """An evaluation benchmark that seed problems must not overlap.

    ``path``: local path, ``file://`` or ``s3://`` URL of a ProcessBench JSON
    array, a JSONL, JSON or Parquet file of problems (or a folder of them).
    ``column``: the problem text column (``problem``, else ``question``).
    ``mode``: ``ngram`` drops exact matches and any shared ``ngram``-word
    window; ``exact`` only exact (normalised) matches — right for templated
    text such as the world benchmark, whose problems share long phrasings.
    """

    name: str
    path: str
    format: Literal["auto", "jsonl", "json", "parquet", "csv"] = "auto"
    column: str | None = None
    mode: Literal["ngram", "exact"] = "ngram"


class IngestSettings(BaseModel):
    """Sizes and limits of seed-problem ingestion."""

    max_problem_chars: int = Field(8000, description="longer problems are quarantined (too_long)")
    max_answer_chars: int = Field(500, description="longer answers are quarantined (too_long)")
    max_raw_chars: int = Field(2000, description="the offending record is stored cut to this length")
    ngram: int = Field(13, description="words per n-gram for decontamination")
    eval_benchmarks: list[BenchmarkSpec] = Field(default_factory=list)
    use_world_benchmark: bool = Field(True, description="also decontaminate against datasets/world_benchmark if stored")
    world_benchmark_mode: Literal["ngram", "exact"] = "exact"
    dedupe_across_partitions: bool = True
    world_size: int = Field(200, description="problems the built-in world source generates")
    world_seed: int = 0
    world_difficulty: str = "standard"
    registry_path: str | None = Field(None, description="datasets.yaml to use (default: PRMFORGE_REGISTRY or the repo's)")
