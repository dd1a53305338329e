"""Shared helpers for the PRM tests: a tiny backbone and synthetic step-labelled rows."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from prmforge.prm.settings import PRMTrainSettings

CORPUS = [
    "Problem: Tom has 3 apples and buys 4 more. How many apples does he have?\nSolution:\n",
    "3 + 4 = 7", "7 - 2 = 5", "5 x 3 = 15", "12 / 4 = 3", "The answer is 7.", "8 + 9 = 17",
]


def tiny_backbone(folder: Path, hidden: int = 32, layers: int = 2) -> str:
    from prmforge.prm.tiny import build_tiny_backbone

    build_tiny_backbone(folder, CORPUS * 5, hidden_size=hidden, layers=layers, vocab_size=300)
    return str(folder)


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    """Arithmetic steps whose label is visible in the text (wrong steps multiply and miss by one).

    The signal is deliberately easy so a 2-layer random model learns it in a few steps.
    """
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        steps, labels = [], []
        for _ in range(rng.randint(1, 4)):
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            ok = rng.random() < 0.6
            steps.append(f"{a} + {b} = {a + b}" if ok else f"{a} x {b} = {a * b + 1}")
            labels.append(ok)
        rows.append({"prompt": f"Problem: sums {i}\nSolution:\n", "steps": steps, "labels": labels})
    return rows


def corrupt(step: str) -> str:
    """A wrong version of a step: the last number in it is off by one."""
    import re

    nums = list(re.finditer(r"-?\d+", step))
    if not nums:
        return step + " (and 1 more)"
    m = nums[-1]
    return step[: m.start()] + str(int(m.group()) + 1) + step[m.end():]


def world_rows(n: int, seed: int, split: str = "train", dataset: str = "world-a") -> tuple[list[dict], list[dict]]:
    """(consensus-label rows, world-benchmark rows) built from world problems and oracle-style corruption."""
    from prmforge.world import generate_problems, prompt_for

    rng = random.Random(seed)
    labels, bench = [], []
    for i, p in enumerate(generate_problems(n, seed=seed, difficulty="easy", split=split)):
        steps = list(p.steps)
        err = -1 if i % 2 == 0 else rng.randrange(len(steps))
        if err >= 0:
            steps[err] = corrupt(steps[err])
        kept = steps if err < 0 else steps[: err + 1]
        hard = [True] * len(kept) if err < 0 else [True] * err + [False]
        # soft: a wrong rollout's right steps are worth less the closer they are to its error (MC-like values)
        values = [1.0] * len(kept) if err < 0 else [round(1.0 - 0.5 * (j + 1) / (err + 1), 4) for j in range(err)] + [0.0]
        labels.append({"problem_id": p.problem_id, "rollout_id": f"{p.problem_id}-r{i}", "dataset": dataset,
                       "prompt": prompt_for(p.problem), "steps": kept, "labels": hard,
                       "first_error": err, "mc_mode": "oracle", "k": 0, "judge": "none",
                       "soft_labels": values, "step_values": values, "step_k": [0] * len(kept), "prefix_value": None,
                       "step_advantages": [None] * len(kept), "labeler": "consensus", "mc_labeler": "oracle",
                       "judge_status": "ok", "judge_verdict": err})
        right = err < 0 or err < len(steps) - 1 and i % 4 == 1
        bench.append({"id": f"wb-{i}", "problem": p.problem, "steps": steps, "label": err,
                      "final_answer_correct": right,
                      "problem_id": p.problem_id, "error_kind": "arithmetic" if err >= 0 else "",
                      "answer": p.answer, "predicted": p.answer if right else None,  # world_benchmark schema
                      "meta": json.dumps(p.meta, sort_keys=True)})
    return labels, bench


def train_settings(**overrides: Any) -> PRMTrainSettings:
    """``PRMTrainSettings`` for trainer unit tests: epochs decide the length (no step cap), full-rate
    backbone and small batches, so the tests' step counts and weight checks do not follow the demo defaults."""
    values: dict[str, Any] = {"lr": 1e-3, "epochs": 2.0, "max_steps": None, "micro_batch_size": 16,
                              "backbone_lr_ratio": 1.0}
    return PRMTrainSettings(**{**values, **overrides})


def _spread(linear, seed: int, std: float = 0.15) -> None:
    """Re-draw an output layer (no bias) so step scores vary: parity on constant (or saturated) scores would
    mean nothing. A random backbone's hidden states at one token differ little between positions, so the
    token classifier is also centred and scaled on sample text (``tiny_token_classifier``)."""
    import torch

    with torch.no_grad():
        linear.weight.normal_(0, std, generator=torch.Generator().manual_seed(seed))
        if getattr(linear, "bias", None) is not None:
            linear.bias.zero_()


def tiny_math_shepherd(folder: Path, max_positions: int = 4096) -> Path:
    """A random Math-Shepherd-layout PRM: a Qwen2 causal LM whose tokenizer has the step tag ``ки``.

    head_dim 32 (hidden 64, 2 heads): the smallest vLLM's CPU attention takes.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prmforge.prm.tiny import build_tiny_backbone

    build_tiny_backbone(folder, CORPUS * 5, hidden_size=64, layers=2, heads=2, vocab_size=300,
                        max_positions=max_positions, arch="qwen2")
    tok = AutoTokenizer.from_pretrained(folder)
    tok.add_tokens(["ки"])
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.resize_token_embeddings(len(tok))
    model.config.tie_word_embeddings = False
    model.lm_head.weight = type(model.lm_head.weight)(model.lm_head.weight.detach().clone())
    _spread(model.lm_head, 3)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def tiny_token_classifier(folder: Path, max_positions: int = 4096) -> Path:
    """A random TRL-style PRM: ``Qwen2ForTokenClassification`` with two labels (0 wrong, 1 right)."""
    import torch
    from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer

    from prmforge.prm.tiny import build_tiny_backbone

    build_tiny_backbone(folder, CORPUS * 5, hidden_size=64, layers=2, heads=2, vocab_size=300,
                        max_positions=max_positions, arch="qwen2")
    cfg = AutoConfig.from_pretrained(folder, num_labels=2)
    cfg.architectures = ["Qwen2ForTokenClassification"]
    model = AutoModelForTokenClassification.from_pretrained(folder, config=cfg).eval()
    _spread(model.score, 4)
    # Every step is read at the separator, where a random backbone's hidden states share a large common
    # part: centre and scale the logit difference on sample text so P(correct) spreads around 0.5.
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok("\n".join(CORPUS) + "\n", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
        diff = logits[:, 1] - logits[:, 0]
        model.score.weight.mul_(2.0 / float(diff.std()))
        model.score.bias.copy_(torch.tensor([0.0, -float(diff.mean()) * 2.0 / float(diff.std())]))
    for stale in folder.glob("*.safetensors"):
        stale.unlink()
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def tiny_qwen_math_prm(folder: Path, max_positions: int = 4096, chat_template: bool = True) -> Path:
    """A random Qwen2.5-Math-PRM look-alike: ``Qwen2ForProcessRewardModel`` read at ``<extra_0>``, ChatML tokens
    and Qwen2-Instruct's chat template in its tokenizer, no ``prmforge_export.json`` (so it is read as Qwen's
    checkpoints are, through its chat template; ``chat_template=False`` drops the template).

    Built through this project's exporter (the same tensors and config Qwen's checkpoints have), then the
    export's own note is removed. head_dim 32 (hidden 64, 2 heads): the smallest vLLM's CPU attention takes.
    """
    import torch
    from tokenizers import AddedToken

    from prmforge.prm.export import EXPORT_INFO, export_qwen2_prm
    from prmforge.prm.layouts import QWEN_STEP_TOKEN
    from prmforge.prm.model import build_prm
    from prmforge.prm.tiny import build_tiny_backbone
    from prmforge.tokenizer import CHAT_TEMPLATE, IM_END, IM_START

    base = build_tiny_backbone(folder.parent / f"{folder.name}-base", CORPUS * 5, hidden_size=64, layers=2, heads=2,
                               vocab_size=300, max_positions=max_positions, arch="qwen2")
    model, tok = build_prm(str(base), standard=True, max_length=max_positions, prompt_format="raw", seed=2)
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in (IM_START, IM_END, QWEN_STEP_TOKEN)],
                   special_tokens=True)
    model.backbone.resize_token_embeddings(len(tok))
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    with torch.no_grad():  # a fresh head's output layer is near zero: spread the scores so parity means something
        model.head[2].weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(5))
    export_qwen2_prm(model, tok, folder)
    (folder / EXPORT_INFO).unlink()
    return folder
