"""The PRM: a causal-LM backbone plus a small head read at step-separator tokens.

Why a backbone + head rather than ``AutoModelForTokenClassification``: any causal LM
checkpoint (the bootstrap policy by default, as Qwen's PRMs start from their policy
family) becomes a PRM without needing a token-classification class for its
architecture. The folder format is plain Hugging Face (``config.json`` +
``model.safetensors`` + tokenizer files) plus ``prm_head.safetensors`` and
``prm_config.json``; weights are safetensors only, pickle files are refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from prmforge.prm.data import encode_example

try:  # the project tokenizer owns the token; fall back to the documented value
    from prmforge.tokenizer import STEP_TOKEN
except ImportError:  # pragma: no cover - only before the tokenizer module lands
    STEP_TOKEN = "<|step|>"

HEAD_FILE = "prm_head.safetensors"
CONFIG_FILE = "prm_config.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

HeadKind = Literal["two_class", "scalar"]


class PickleWeightsError(ValueError):
    """A model folder holds pickle weights only; prmforge loads safetensors only."""


class ModelSourceError(RuntimeError):
    """A base-model reference (hub id, path, URI) could not be resolved."""


@dataclass
class PRMConfig:
    """What a saved PRM needs besides its weights to score steps the same way again."""

    head: HeadKind = "two_class"
    step_token: str = STEP_TOKEN
    step_token_id: int = -1
    max_length: int = 512
    prompt_format: Literal["world", "raw"] = "world"
    base_model: str = ""


def format_prompt(problem: str, prompt_format: str = "world") -> str:
    """The prompt text the PRM sees for ``problem`` (the policy's prompt by default)."""
    if prompt_format == "world":
        from prmforge.world import prompt_for

        return prompt_for(problem)
    return problem


# ---- resolving a base model -------------------------------------------------------
def model_cache_dir() -> Path:
    from prmforge.settings import home

    return home() / "cache" / "models"


def check_no_pickle(folder: Path) -> None:
    """Refuse folders whose weights exist only as pickle files (arbitrary code on load)."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    has_safe = any(p.suffix == ".safetensors" for p in files)
    pickles = [p.name for p in files if p.suffix in PICKLE_SUFFIXES]
    if pickles and not has_safe:
        raise PickleWeightsError(
            f"{folder} holds only pickle weights ({', '.join(sorted(pickles)[:3])}); prmforge loads "
            "safetensors only because unpickling runs arbitrary code. Convert the checkpoint with "
            "`model.save_pretrained(dir, safe_serialization=True)` in a trusted environment."
        )


def resolve_model_dir(ref: str) -> Path | str:
    """A local folder for ``ref`` (s3:// or file:// storage URI, local path), or the hub id itself.

    Storage URIs are downloaded once into the data directory's cache (keyed by the
    URI) and must carry the storage ``_COMPLETE`` marker, so a half-written model
    is never loaded.
    """
    if ref.startswith(("s3://", "s3a://", "file://")):
        from prmforge.storage import COMPLETE_MARKER, Storage

        target = model_cache_dir() / hashlib.sha256(ref.encode()).hexdigest()[:16]
        if (target / COMPLETE_MARKER).exists():
            return target
        storage = Storage(ref)
        if not storage.dir_complete():
            raise ModelSourceError(f"{ref} is missing or incomplete (no {COMPLETE_MARKER} marker)")
        tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
        storage.get_dir(tmp)
        if target.exists():
            import shutil

            shutil.rmtree(target)
        tmp.rename(target)
        return target
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelSourceError(f"{ref} is a file; a model is a folder with config.json")
        return path
    if ref.startswith(("/", "./", "../")):
        raise ModelSourceError(f"local model folder {ref} does not exist")
    return ref  # a hub id; from_pretrained resolves it (offline → clear error below)


def load_backbone(ref: str, trust_remote_code: bool = False):
    """``(AutoModel, tokenizer)`` for a hub id, local folder or storage URI, safetensors only."""
    from transformers import AutoModel, AutoTokenizer

    where = resolve_model_dir(ref)
    if isinstance(where, Path):
        check_no_pickle(where)
    # Hub ids resolve from the local Hugging Face cache only: nothing downloads at run time.
    local_only = {} if isinstance(where, Path) else {"local_files_only": True}
    try:
        tok = AutoTokenizer.from_pretrained(str(where), trust_remote_code=trust_remote_code, **local_only)
        model = AutoModel.from_pretrained(str(where), use_safetensors=True, trust_remote_code=trust_remote_code,
                                          dtype=torch.float32, **local_only)
    except OSError as exc:
        hint = (" (hub ids load from the local Hugging Face cache only, offline: pass a local path or "
                "storage URI)") if not isinstance(where, Path) else ""
        raise ModelSourceError(f"could not load model {ref!r}{hint}: {exc}") from exc
    return model, tok


def ensure_step_token(tokenizer, backbone: nn.Module | None = None, step_token: str = STEP_TOKEN) -> int:
    """The id of the step token, adding it (and resizing embeddings) when missing."""
    from tokenizers import AddedToken

    ids = tokenizer.convert_tokens_to_ids([step_token])
    tid = ids[0] if ids else None
    if tid is None or tid == tokenizer.unk_token_id:
        tokenizer.add_tokens([AddedToken(step_token, special=True, normalized=False)], special_tokens=True)
        tid = tokenizer.convert_tokens_to_ids(step_token)
    if backbone is not None and tid >= backbone.get_input_embeddings().weight.shape[0]:
        backbone.resize_token_embeddings(len(tokenizer))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or step_token
    return int(tid)


# ---- the model ------------------------------------------------------------------
class ProcessRewardModel(nn.Module):
    """Backbone hidden states → per-position logits; scores are read at separators."""

    def __init__(self, backbone: nn.Module, config: PRMConfig, seed: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config
        hidden = backbone.config.hidden_size
        gen = torch.Generator().manual_seed(seed)
        self.head = nn.Linear(hidden, 2 if config.head == "two_class" else 1)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=gen) * 0.02)
            self.head.bias.zero_()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        hidden = out.last_hidden_state
        return self.head(hidden.to(self.head.weight.dtype))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """P(step is correct) from logits of either head kind."""
        if self.config.head == "two_class":
            return torch.softmax(logits.float(), dim=-1)[..., 1]
        return torch.sigmoid(logits.float()[..., 0])

    # ---- persistence -------------------------------------------------------
    def save(self, folder: str | Path, tokenizer) -> Path:
        """Write the HF backbone, head, config and tokenizer, all safetensors."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(folder, safe_serialization=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                  str(folder / HEAD_FILE))
        (folder / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2))
        tokenizer.save_pretrained(folder)
        return folder

    @classmethod
    def load(cls, ref: str | Path, trust_remote_code: bool = False) -> tuple[ProcessRewardModel, object]:
        """Load a saved PRM (folder or storage URI) and its tokenizer."""
        where = resolve_model_dir(str(ref))
        if not isinstance(where, Path) or not (where / CONFIG_FILE).exists():
            raise ModelSourceError(f"{ref} is not a saved PRM folder (no {CONFIG_FILE})")
        check_no_pickle(where)
        config = PRMConfig(**json.loads((where / CONFIG_FILE).read_text()))
        backbone, tok = load_backbone(str(where), trust_remote_code)
        model = cls(backbone, config)
        model.head.load_state_dict(load_file(str(where / HEAD_FILE)))
        model.eval()
        return model, tok


def build_prm(base_model: str, head: HeadKind = "two_class", max_length: int = 512, seed: int = 0,
              prompt_format: str = "world", trust_remote_code: bool = False) -> tuple[ProcessRewardModel, object]:
    """A fresh PRM on ``base_model``: the step token is added if the tokenizer lacks it."""
    torch.manual_seed(seed)
    backbone, tok = load_backbone(base_model, trust_remote_code)
    tid = ensure_step_token(tok, backbone)
    limit = getattr(backbone.config, "max_position_embeddings", None)
    if limit:  # never format past what the backbone was built for
        max_length = min(max_length, int(limit))
    cfg = PRMConfig(head=head, step_token=STEP_TOKEN, step_token_id=tid, max_length=max_length,
                    prompt_format=prompt_format, base_model=base_model)  # type: ignore[arg-type]
    return ProcessRewardModel(backbone, cfg, seed=seed), tok


# ---- scoring ----------------------------------------------------------------------
@torch.no_grad()
def score_steps(
    model: ProcessRewardModel,
    tokenizer,
    items: Sequence[tuple[str, Sequence[str]]],
    batch_size: int = 16,
    max_length: int | None = None,
) -> list[list[float]]:
    """P(correct) for every step of every ``(problem, steps)`` item.

    Steps that do not fit in ``max_length`` get ``NaN`` (never a made-up score);
    callers count them. Items are sorted by length so batches pad little.
    """
    from prmforge.prm.data import collate

    model.eval()
    cfg = model.config
    max_length = max_length or cfg.max_length
    device = next(model.parameters()).device
    encoded = [
        encode_example(tokenizer, format_prompt(problem, cfg.prompt_format), list(steps), cfg.step_token_id,
                       max_length)
        for problem, steps in items
    ]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    out: list[list[float]] = [[] for _ in encoded]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = collate([encoded[i] for i in idx], pad)
        logits = model(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        probs = model.probabilities(logits).cpu()
        for row, i in enumerate(idx):
            ex = encoded[i]
            scores = [float(probs[row, p]) for p in ex.step_positions]
            out[i] = scores + [math.nan] * ex.n_dropped_steps
    return out
