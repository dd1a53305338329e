"""Settings of the three PRM stages (``demo`` defaults; ``tiny``/``world`` in ``prmforge.profiles``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class PRMTrainSettings(BaseModel):
    """``prm_model``: what to train on, from which backbone, and how."""

    base_model: str = Field("policy", description="'policy' (the prm_base_model asset: the policy, or a stronger "
                            "sibling when the profile's prm_base stage says so), a hub id, local path or URI")
    datasets: list[str] | None = Field(None, description="dataset partitions to train on; None = all")
    head: Literal["two_class", "scalar"] = "two_class"
    loss: Literal["ce", "bce", "mse"] = "ce"
    max_length: int = 256
    lr: float = 3e-3  # the head's; the backbone gets lr x backbone_lr_ratio
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    epochs: float = 3.0
    max_steps: int | None = Field(60, description="cap on optimizer steps (None: epochs decide); bounds demo time")
    micro_batch_size: int = 32
    grad_accum: int = 1
    group_by_length: int = 8
    class_balance: bool = Field(True, description="weigh right and wrong steps equally in the loss")
    backbone_lr_ratio: float = Field(0.03, description="backbone lr = lr x this (head uses lr); small, so the "
                                     "surprisal features stay close to the base LM's")
    max_grad_norm: float = 1.0
    seed: int = 0
    bf16: bool = True
    checkpoint_every: int = 50
    trust_remote_code: bool = False
    surprisal: bool = Field(True, description="the head also reads the backbone LM's per-step token "
                            "log-prob statistics (needs a causal LM base model)")
    surprisal_reference: bool = Field(False, description="compute the surprisal features with a frozen copy "
                                      "of the base LM (saved with the PRM), so the backbone can train at full rate")
    head_hidden: int = Field(64, ge=0, description="hidden units of the head (0: linear)")
    freeze_backbone: bool = Field(False, description="train only the head")
    step_token_init: str | None = Field("\n", description="start the step token's embedding as this single token "
                                        "(the policy's step separator); None keeps the backbone's")


class PRMEvalSettings(BaseModel):
    """``prm_evaluation``: benchmarks, threshold split and Best-of-N sampling."""

    benchmarks: list[str] = Field(default_factory=lambda: ["world"],
                                  description="'world', ProcessBench JSON path/folder, s3:// URI or hf:<id>")
    threshold_split: float = Field(0.3, gt=0, lt=1, description="share of problems used to choose the threshold")
    max_samples_per_subset: int | None = 400
    bon_n: int = 8
    bon_problems: int = 40
    bon_temperature: float = 1.0
    bon_max_tokens: int = 160
    engine_batch_size: int = 256
    score_batch_size: int = 32
    seed: int = 0


class PRMRegistrySettings(BaseModel):
    """``registered_prm``: registered model name and the champion gate."""

    model_name: str = "prmforge-prm"
    gate_metric: str = "world_f1"
    gate_margin: float = 0.0
