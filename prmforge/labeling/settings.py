"""Settings of the labelling stages (demo defaults; ``prmforge.profiles`` lists per-profile changes)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from prmforge.config import StageSettings


class MCSettings(StageSettings):
    """``mc_step_labels``: Monte Carlo estimation of step-prefix values."""

    mode: Literal["per_step", "binary_search"] = Field("binary_search", description="probe every step prefix, "
                                                       "or binary-search the first one whose value drops to 0")
    k: int = Field(8, gt=0, description="completions sampled from each probed prefix (the maximum with adaptive)")
    reuse: bool = Field(False, description="share evidence between the rollouts of a problem: a prefix several "
                        "rollouts share is sampled once, and a prefix that a correct rollout or a correct "
                        "completion passes through is positive without sampling (docs/labeling.md)")
    adaptive: bool = Field(False, description="sample each probed prefix in waves (first_wave, then doubling, up "
                           "to k) and stop at its first correct completion: the hard label of the k-sample test "
                           "at a fraction of its cost; soft values then overstate (use fixed k for soft labels)")
    verify: bool = Field(False, description="return per_step's first error, not an estimate: probe prefixes in "
                         "ascending order until the first whose k samples hold no correct one (after binary "
                         "search, only those it inferred positive; on correct rollouts too); with reuse, only "
                         "shared estimates of the same prefix, no proofs, label (docs/labeling.md)")
    first_wave: int = Field(2, gt=0, description="completions in an adaptive prefix's first wave")
    max_tokens: int = Field(160, gt=0, description="max new tokens of one completion")
    temperature: float = Field(1.0, ge=0, description="sampling temperature of the completions")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass of the completions")
    seed: int = Field(0, description="sampling seed (each shard derives its own)")
    shard_size: int = Field(128, gt=0, description="rollouts per resumable shard")
    batch_prefixes: int = Field(128, gt=0, description="prefixes per engine call (each sampled k times)")
    step_separator: str = Field("auto", description="'auto', 'world', 'paragraph' or a literal separator")
    max_failed_share: float = Field(0.05, ge=0, le=1, description="contract: the largest share of rollouts whose "
                                    "MC status is error or empty before the blocking mc_contract stops consensus")

    def run_fingerprint(self) -> dict:
        """Fields that change the rows (the contract threshold does not)."""
        return self.model_dump(exclude={"max_failed_share"})

    @property
    def strategy(self) -> str:
        """The ``mc_mode`` recorded in each row: the mode plus the strategies on (``binary_search+verify+reuse``)."""
        return "+".join([self.mode, *(["verify"] if self.verify else []), *(["reuse"] if self.reuse else []),
                         *(["adaptive"] if self.adaptive else [])])


class JudgeSettings(StageSettings):
    """``judge_step_labels``: sampling of the LLM judge (the calculator ignores them)."""

    max_tokens: int = Field(512, gt=0, description="max new tokens of one verdict")
    temperature: float = Field(0.0, ge=0, description="sampling temperature of the judge")
    seed: int = Field(0, description="sampling seed of the judge")
    shard_size: int = Field(128, gt=0, description="rollouts per resumable shard (LLM judge only)")
    max_unusable_share: float = Field(0.5, ge=0, le=1, description="contract: the largest share of verdicts that "
                                      "are unparsed, abstained or failed before the blocking judge_contract stops "
                                      "consensus")

    def run_fingerprint(self) -> dict:
        """Fields that change the rows (the contract threshold does not)."""
        return self.model_dump(exclude={"max_unusable_share"})


class ConsensusSettings(StageSettings):
    """``consensus_labels``: consensus filtering bounds and the audit target."""

    kept_share_min: float = Field(0.05, ge=0, le=1, description="WARN below this kept share")
    kept_share_max: float = Field(0.98, ge=0, le=1, description="WARN above this kept share (no filtering)")
    audit_target: float = Field(0.95, ge=0, le=1, description="exact first-error agreement target")
    min_kept_share: float = Field(0.0, ge=0, le=1, description="contract: the blocking consensus_contract fails "
                                  "below this kept share (0: off; kept_share_min only WARNs)")
