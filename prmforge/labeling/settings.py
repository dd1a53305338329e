"""Settings of the labelling stages (demo defaults; ``prmforge.profiles`` lists per-profile changes)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class MCSettings(BaseModel):
    """Monte Carlo estimation of step-prefix values (``mc_step_labels``)."""

    mode: Literal["per_step", "binary_search"] = "binary_search"
    k: int = Field(8, gt=0, description="completions sampled from each probed prefix")
    max_tokens: int = Field(160, gt=0, description="max new tokens of one completion")
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int = 0
    shard_size: int = Field(128, gt=0, description="rollouts per resumable shard")
    batch_prefixes: int = Field(128, gt=0, description="prefixes per engine call (each sampled k times)")
    step_separator: str = Field("auto", description="'auto', 'world', 'paragraph' or a literal separator")


class JudgeSettings(BaseModel):
    """Sampling of the LLM judge (``judge_step_labels``); the calculator ignores them."""

    max_tokens: int = Field(512, gt=0)
    temperature: float = Field(0.0, ge=0)
    seed: int = 0
    shard_size: int = Field(128, gt=0)


class ConsensusSettings(BaseModel):
    """Consensus filtering bounds and the audit target (``consensus_labels``)."""

    kept_share_min: float = Field(0.05, ge=0, le=1, description="WARN below this kept share")
    kept_share_max: float = Field(0.98, ge=0, le=1, description="WARN above this kept share (no filtering)")
    audit_target: float = Field(0.95, ge=0, le=1, description="exact first-error agreement target")
