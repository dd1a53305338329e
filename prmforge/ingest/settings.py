"""Ingestion settings (``demo`` defaults; profiles override under ``seed_problems``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from prmforge.config import StageSettings

ALLOWED_SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"val": "validation", "valid": "validation", "dev": "validation", "eval": "test"}


class BenchmarkSpec(StageSettings):
    """An evaluation benchmark that seed problems must not overlap.

    ``mode``: ``ngram`` drops exact matches and any shared ``ngram``-word
    window; ``exact`` only exact (normalised) matches — right for templated
    text such as the world benchmark, whose problems share long phrasings.
    """

    name: str = Field(description="name reported in the dropped rows' contaminated_by")
    path: str = Field(description="local path, file:// or s3:// URL of a ProcessBench JSON array, a JSONL, JSON "
                      "or Parquet file of problems (or a folder of them)")
    format: Literal["auto", "jsonl", "json", "parquet", "csv"] = Field("auto", description="file format "
                                                                       "(auto: from the extension)")
    column: str | None = Field(None, description="problem text column (None: problem, else question)")
    mode: Literal["ngram", "exact"] = Field("ngram", description="ngram: exact matches and shared n-gram "
                                            "windows; exact: exact (normalised) matches only")


class IngestSettings(StageSettings):
    """``seed_problems``: sizes and limits of seed-problem ingestion."""

    max_problem_chars: int = Field(8000, description="longer problems are quarantined (too_long)")
    max_answer_chars: int = Field(500, description="longer answers are quarantined (too_long)")
    max_raw_chars: int = Field(2000, description="the offending record is stored cut to this length")
    ngram: int = Field(13, description="words per n-gram for decontamination")
    eval_benchmarks: list[BenchmarkSpec] = Field(default_factory=list, description="benchmarks seed problems "
                                                 "must not overlap (run config replaces the profile's list)")
    use_world_benchmark: bool = Field(True, description="also decontaminate against datasets/world_benchmark if stored")
    world_benchmark_mode: Literal["ngram", "exact"] = Field("exact", description="decontamination mode against "
                                                            "the world benchmark (templated text: exact)")
    dedupe_across_partitions: bool = Field(True, description="drop problems already accepted in another dataset")
    world_size: int = Field(200, description="problems the built-in world source generates")
    world_seed: int = Field(0, description="world seed of the built-in world source")
    world_difficulty: str = Field("standard", description="difficulty of the built-in world source's problems")
    registry_path: str | None = Field(None, description="datasets.yaml to use (default: PRMFORGE_REGISTRY or the repo's)")
