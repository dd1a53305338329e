"""Settings of the three PRM stages (``demo`` defaults; ``tiny``/``world`` in ``prmforge.profiles``).

``PRMTrainSettings`` is also what the trainer (``prmforge.prm.train``) takes:
there is no second copy of the optimisation settings.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from prmforge.config import StageSettings


class PRMTrainSettings(StageSettings):
    """``prm_model``: what to train on, from which backbone, and how."""

    base_model: str = Field("policy", description="'policy' (the prm_base_model asset: the policy, or a stronger "
                            "sibling when the profile's prm_base_model stage says so), a hub id, local path or URI")
    datasets: list[str] | None = Field(None, description="dataset partitions to train on; None = all")
    head_kind: Literal["surprisal", "standard"] = Field(
        "surprisal", description="surprisal: this project's head (hidden state + LM surprisal features, see "
        "surprisal/head_hidden); standard: the Qwen2ForProcessRewardModel head (Linear(h,h) -> ReLU -> "
        "Linear(h,2)), exported with the registered PRM in a layout vLLM serves when the base is Qwen2; "
        "overrides head, surprisal and head_hidden")
    head: Literal["two_class", "scalar"] = Field("two_class", description="two_class: right/wrong logits per "
                                                 "step; scalar: one score per step")
    loss: Literal["ce", "bce", "mse"] = Field("ce", description="loss on the step labels ('ce' with label_kind "
                                             "soft means 'bce')")
    label_kind: Literal["hard", "soft"] = Field(
        "hard", description="hard: the consensus labels (right/wrong per step); soft: the per-step MC values "
        "(consensus_labels.soft_labels, the hard label where no value was measured), trained with BCE against "
        "the value (docs/labeling.md#soft-labels-advantages-and-provenance)")
    max_length: int | None = Field(None, description="tokens per training example; None = the base model's "
                                   "context (trailing steps past it are dropped and counted)")
    lr: float = Field(3e-3, description="peak learning rate of the head; the backbone gets lr x backbone_lr_ratio")
    weight_decay: float = Field(0.01, description="AdamW weight decay (not on biases and norms)")
    warmup_ratio: float = Field(0.06, description="share of the steps spent in linear warmup")
    min_lr_ratio: float = Field(0.1, description="cosine decay ends at this share of the peak learning rate")
    epochs: float = Field(3.0, description="passes over the data (when max_steps is None)")
    max_steps: int | None = Field(60, description="cap on optimizer steps (None: epochs decide); bounds demo time")
    micro_batch_size: int = Field(32, description="examples per forward pass (per rank)")
    grad_accum: int = Field(1, description="micro batches per optimizer step")
    group_by_length: int = Field(8, description="windows of N global batches sorted by length (1 = off)")
    class_balance: bool = Field(True, description="weigh right and wrong steps equally in the loss")
    backbone_lr_ratio: float = Field(0.03, description="backbone lr = lr x this (head uses lr); small, so the "
                                     "surprisal features stay close to the base LM's")
    max_grad_norm: float = Field(1.0, description="gradient clipping norm")
    seed: int = Field(0, description="seed of the head's initialisation and the data order")
    bf16: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")
    checkpoint_every: int = Field(50, description="optimizer steps between resumable checkpoints in storage")
    keep_checkpoints: int = Field(2, description="checkpoints kept in storage (older ones are deleted)")
    trust_remote_code: bool = Field(False, description="allow the base model's own code (off: safetensors and "
                                    "built-in architectures only)")
    surprisal: bool = Field(True, description="the head also reads the backbone LM's per-step token "
                            "log-prob statistics (needs a causal LM base model)")
    surprisal_reference: bool = Field(False, description="compute the surprisal features with a frozen copy "
                                      "of the base LM (saved with the PRM), so the backbone can train at full rate")
    head_hidden: int = Field(64, ge=0, description="hidden units of the head (0: linear)")
    hidden_state: bool = Field(False, description="surprisal head: it also reads the backbone's hidden state at "
                               "each step's end (the backbone trains); False: the surprisal features only, a "
                               "learned reading of the base LM's own token probabilities, with the backbone frozen "
                               "(training it would only rewrite those probabilities). False generalises from the "
                               "few labels of a demo where the hidden state overfits (docs/prm.md); ignored "
                               "without surprisal")
    freeze_backbone: bool = Field(False, description="train only the head")
    step_separator: str | None = Field(
        "\n", description="surprisal head: the text between the policy's steps; steps are tokenised as the policy "
        "wrote them (one text joined by it, no step token, each step scored at its own last token), so the LM's "
        "surprise is measured on the policy's own tokens, not on a step tokenised alone; None: each step tokenised "
        "alone and closed by the step token (the standard head always is)")
    step_token_init: str | None = Field("\n", description="start the step token's embedding as this single token "
                                        "(the policy's step separator); None keeps the backbone's")
    num_workers: int = Field(1, ge=1, description="training processes: > 1 makes the step launch torchrun with one "
                             "DDP process per GPU (gloo on CPU); micro_batch_size is per process, so the global "
                             "batch is num_workers x micro_batch_size x grad_accum")
    max_restarts: int = Field(0, ge=0, description="num_workers > 1: torchrun restarts of the process group after a "
                              "failure (each resumes from the last checkpoint); 0 = a failure fails the step")


    @property
    def effective_loss(self) -> Literal["ce", "bce", "mse"]:
        """The loss training uses: soft labels have no class index, so 'ce' becomes 'bce' on them."""
        return "bce" if self.label_kind == "soft" and self.loss == "ce" else self.loss


class PRMEvalSettings(StageSettings):
    """``prm_evaluation``: benchmarks, threshold split and Best-of-N sampling."""

    benchmarks: list[str] = Field(default_factory=lambda: ["world"],
                                  description="'world', ProcessBench JSON path/folder, s3:// URI or hf:<id>")
    threshold_split: float = Field(0.3, gt=0, lt=1, description="share of problems used to choose the threshold")
    max_samples_per_subset: int | None = Field(None, description="score at most this many samples per subset "
                                               "(seeded; reported in the summary); None = every sample")
    max_length: int | None = Field(None, description="tokens per scored sample; None = the PRM backbone's context "
                                   "(steps past it are unscored and reported)")
    max_unscored_share: float = Field(0.01, ge=0, le=1, description="the blocking steps_scored check fails "
                                      "above this share of unscored steps")
    bon_n: int = Field(8, description="samples per problem for Best-of-N")
    bon_problems: int = Field(40, description="held-out world problems for Best-of-N")
    bon_temperature: float = Field(1.0, description="sampling temperature of the Best-of-N samples")
    bon_max_tokens: int = Field(160, description="max new tokens of one Best-of-N sample")
    engine_batch_size: int = Field(256, description="prompts per sampling batch")
    score_batch_size: int = Field(32, description="examples per PRM scoring batch")
    backend: Literal["hf", "vllm"] = Field("hf", description="who scores the benchmark and Best-of-N steps: hf "
                                           "(transformers, any PRM) or vllm (vLLM's pooling runner on the PRM's "
                                           "qwen2_prm/ export: head_kind standard on a Qwen2 base); with vllm the "
                                           "benchmark is also scored by hf and the largest difference reported "
                                           "(vllm_parity_max_abs_diff)")
    vllm_kv_cache_gib: float = Field(1.0, gt=0, description="backend vllm on CPU: KV cache size in GiB")
    seed: int = Field(0, description="seed of the sampling and the threshold split")


class PRMRegistrySettings(StageSettings):
    """``registered_prm``: registered model name and the champion gate."""

    model_name: str = Field("prmforge-prm", description="MLflow registered model name")
    gate_metric: str = Field("world_f1", description="prm_evaluation metric the champion gate compares")
    gate_margin: float = Field(0.0, description="a challenger becomes champion when it beats the champion by more")
