"""The PRM: a causal-LM backbone plus a small head read at step-separator tokens.

Why a backbone + head rather than ``AutoModelForTokenClassification``: any causal LM
checkpoint (the bootstrap policy by default, as Qwen's PRMs start from their policy
family) becomes a PRM without needing a token-classification class for its
architecture. The folder format is plain Hugging Face (``config.json`` +
``model.safetensors`` + tokenizer files) plus ``prm_head.safetensors`` and
``prm_config.json``; weights are safetensors only, pickle files are refused.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from prmforge.model_files import ModelSourceError, local_model, require_safetensors, resolve_model_dir
from prmforge.prm.data import encode_example

try:  # the project tokenizer owns the token; fall back to the documented value
    from prmforge.tokenizer import STEP_TOKEN
except ImportError:  # pragma: no cover - only before the tokenizer module lands
    STEP_TOKEN = "<|step|>"

HEAD_FILE = "prm_head.safetensors"
REFERENCE_DIR = "reference"
CONFIG_FILE = "prm_config.json"
EXPORT_DIR = "qwen2_prm"  # the same PRM as Qwen2ForProcessRewardModel (standard head on a Qwen2 base only)

HeadKind = Literal["two_class", "scalar"]


@dataclass
class PRMConfig:
    """What a saved PRM needs besides its weights to score steps the same way again."""

    head: HeadKind = "two_class"
    step_token: str = STEP_TOKEN
    step_token_id: int = -1
    max_length: int = 512
    prompt_format: Literal["world", "raw"] = "world"
    base_model: str = ""
    surprisal: bool = False  # head also reads the backbone LM's per-step token log-prob statistics
    head_hidden: int = 0  # 0: linear head; N: one hidden layer of N units
    surprisal_reference: bool = False  # surprisal from a frozen copy of the base LM (saved in reference/)
    head_act: Literal["gelu", "relu"] = "gelu"  # relu + head_hidden == hidden size: the standard (Qwen2 PRM) head
    step_separator: str | None = None  # None: each step + step token; text: the steps as written, joined by it
    hidden_state: bool = True  # the head reads the backbone's hidden state (False: surprisal features only)


def format_prompt(problem: str, prompt_format: str = "world", tokenizer=None) -> str:
    """The prompt text the PRM sees for ``problem``.

    ``world`` (default): the embedded policy's prompt, built by the one prompt
    builder (:class:`prmforge.prompts.PolicyPrompt`), in ``tokenizer``'s chat
    template when it has one (a PRM on the embedded policy has the policy's
    ChatML template, so it reads the very text the rollouts were sampled with);
    ``raw``: the problem text as is.
    """
    if prompt_format == "world":
        from prmforge.prompts import PolicyPrompt

        chat = tokenizer if getattr(tokenizer, "chat_template", None) else None
        return PolicyPrompt("world", bootstrap_policy=True, chat_tokenizer=chat)(problem)
    return problem


def load_backbone(ref: str, trust_remote_code: bool = False, causal_lm: bool = False, tokenizer=None):
    """``(AutoModel, tokenizer)`` for a hub id, local folder or storage URI, safetensors only.

    ``causal_lm`` loads ``AutoModelForCausalLM`` instead (the LM head is kept for
    surprisal features).
    """
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    where, local_only = local_model(ref)  # hub ids: local Hugging Face cache only, nothing downloads
    try:
        tok = tokenizer or AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code,
                                                         **local_only)
        cls = AutoModelForCausalLM if causal_lm else AutoModel
        model = cls.from_pretrained(where, use_safetensors=True, trust_remote_code=trust_remote_code,
                                          dtype=torch.float32, **local_only)
    except OSError as exc:
        hint = (" (hub ids load from the local Hugging Face cache only, offline: pass a local path or "
                "storage URI)") if local_only else ""
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
N_SURPRISAL_FEATURES = 4


def surprisal_features(logits: torch.Tensor, input_ids: torch.Tensor, step_mask: torch.Tensor,
                       step_token_id: int) -> torch.Tensor:
    """Per-position statistics of the LM's surprise at the tokens of the step each position belongs to.

    Why: a wrong step is, very often, a step its own policy found unlikely: an
    arithmetic slip is a low-probability result token, a used distractor a
    low-probability operand. On the world benchmark the untrained policy's minimum
    token probability per step already separates right from wrong steps with
    AUC 0.96 (docs/prm.md); a hidden-state head alone must learn that comparison
    from scratch and did not, on the data a CPU run affords.

    ``step_mask`` (:func:`prmforge.prm.data.collate`) is 1 on step text, 2 on
    the token that closes a step (the step token, or with steps encoded as
    written the step's own last token) and 0 on the prompt and padding. A
    step's statistics are over its text tokens, the closing token included
    unless it is the step token. Returns ``[B, T, 4]``: for every position,
    over the tokens of its step: min and mean of log p(token), min of log
    p(token) - max log p at that position, and log(1 + tokens).
    """
    lp = torch.log_softmax(logits.float(), dim=-1)  # [B, T, V]
    tok_lp = torch.zeros(input_ids.shape, dtype=lp.dtype, device=lp.device)
    gap = torch.zeros_like(tok_lp)
    prev = lp[:, :-1]
    picked = prev.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    tok_lp[:, 1:] = picked
    gap[:, 1:] = picked - prev.max(dim=-1).values
    is_end = (step_mask == 2).long()
    seg = torch.cumsum(is_end, dim=1) - is_end  # step index; the closing token belongs to the step it closes
    mask = (step_mask > 0) & (input_ids != step_token_id)
    mask[:, 0] = False
    b, t = input_ids.shape
    index = (torch.arange(b, device=seg.device)[:, None] * t + seg).reshape(-1)
    flat_mask = mask.reshape(-1)
    idx = index[flat_mask]

    def reduce(values: torch.Tensor, how: str) -> torch.Tensor:
        out = torch.zeros(b * t, dtype=values.dtype, device=values.device)
        return out.scatter_reduce(0, idx, values.reshape(-1)[flat_mask], reduce=how, include_self=how == "amin")

    count = torch.zeros(b * t, dtype=lp.dtype, device=lp.device).index_add(
        0, idx, torch.ones_like(idx, dtype=lp.dtype))
    feats = torch.stack([reduce(tok_lp, "amin"), reduce(tok_lp, "sum") / count.clamp(min=1),
                         reduce(gap, "amin"), torch.log1p(count)], dim=-1)  # [B*T, F] per (row, step)
    return feats[index].reshape(b, t, N_SURPRISAL_FEATURES)


class ProcessRewardModel(nn.Module):
    """Backbone hidden states (and optionally LM surprisal features) → per-position logits.

    Scores are read at separators. With ``config.surprisal`` the backbone is a causal
    LM and the head also sees :func:`surprisal_features` of the step just closed,
    computed by ``reference`` (a frozen copy of the base LM) when one is given, so
    the backbone can be fine-tuned at full rate without eroding the features.
    """

    def __init__(self, backbone: nn.Module, config: PRMConfig, seed: int = 0,
                 reference: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config
        if config.surprisal_reference and reference is None:
            raise ValueError("config.surprisal_reference needs the reference LM")
        self.reference = reference
        if reference is not None:
            reference.eval()
            for p in reference.parameters():
                p.requires_grad_(False)
        if not config.hidden_state and not config.surprisal:
            raise ValueError("a head without the hidden state reads the surprisal features: set surprisal")
        hidden = backbone.config.hidden_size if config.hidden_state else 0
        n_in = hidden + (N_SURPRISAL_FEATURES if config.surprisal else 0)
        n_out = 2 if config.head == "two_class" else 1
        gen = torch.Generator().manual_seed(seed)
        if config.head_hidden:
            act = nn.ReLU() if config.head_act == "relu" else nn.GELU()
            self.head = nn.Sequential(nn.Linear(n_in, config.head_hidden), act,
                                      nn.Linear(config.head_hidden, n_out))
        else:
            self.head = nn.Sequential(nn.Linear(n_in, n_out))
        with torch.no_grad():
            for layer in self.head:
                if isinstance(layer, nn.Linear):
                    std = 0.02 if layer.out_features == n_out else 1.0 / math.sqrt(layer.in_features)
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * std)
                    layer.bias.zero_()

    def train(self, mode: bool = True) -> ProcessRewardModel:
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()  # frozen: never in training mode
        return self

    @property
    def head_dtype(self) -> torch.dtype:
        return self.head[0].weight.dtype

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                step_mask: torch.Tensor | None = None) -> torch.Tensor:
        if not self.config.surprisal:
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
            return self.head(out.last_hidden_state.to(self.head_dtype))
        if step_mask is None:
            raise ValueError("a surprisal PRM needs step_mask (see prmforge.prm.data.collate)")
        hidden = self.backbone.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.reference is not None:
            with torch.no_grad():
                logits = self.reference(input_ids=input_ids, attention_mask=attention_mask).logits
        else:
            logits = self.backbone.get_output_embeddings()(hidden)
        feats = surprisal_features(logits, input_ids, step_mask, self.config.step_token_id).to(self.head_dtype)
        if not self.config.hidden_state:
            return self.head(feats)
        return self.head(torch.cat([hidden.to(self.head_dtype), feats], dim=-1))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """P(step is correct) from logits of either head kind."""
        if self.config.head == "two_class":
            return torch.softmax(logits.float(), dim=-1)[..., 1]
        return torch.sigmoid(logits.float()[..., 0])

    # ---- persistence -------------------------------------------------------
    def save(self, folder: str | Path, tokenizer) -> Path:
        """Write the HF backbone, head, config and tokenizer, all safetensors.

        ``prmforge.prm.export.save_prm`` also writes the vLLM-servable export beside them.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(folder, safe_serialization=True)
        if self.reference is not None:
            self.reference.save_pretrained(folder / REFERENCE_DIR, safe_serialization=True)
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
        require_safetensors(where)
        config = PRMConfig(**json.loads((where / CONFIG_FILE).read_text()))
        backbone, tok = load_backbone(str(where), trust_remote_code, causal_lm=config.surprisal)
        reference = None
        if config.surprisal_reference:
            reference, _ = load_backbone(str(where / REFERENCE_DIR), trust_remote_code, causal_lm=True, tokenizer=tok)
        model = cls(backbone, config, reference=reference)
        state = load_file(str(where / HEAD_FILE))
        if "weight" in state:  # saved before the head became a Sequential (a single Linear)
            state = {f"0.{k}": v for k, v in state.items()}
        model.head.load_state_dict(state)
        model.eval()
        return model, tok


def init_step_embedding(tokenizer, backbone: nn.Module, step_token_id: int, like: str | None) -> bool:
    """Copy the input embedding of ``like`` (the policy's own step separator) onto the step token.

    Why: the policy never saw ``<|step|>``, so its embedding is untrained noise that
    every later step attends to. Starting it as the separator the policy was trained
    with (``\\n`` in the world) puts the backbone exactly in its training distribution
    at step 0, and fine-tuning starts from features that already track the solution.
    Returns False (and changes nothing) when ``like`` is not a single token.
    """
    if not like:
        return False
    ids = tokenizer(like, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        return False
    emb = backbone.get_input_embeddings().weight
    with torch.no_grad():
        emb[step_token_id].copy_(emb[ids[0]])
    return True


def build_prm(base_model: str, head: HeadKind = "two_class", max_length: int | None = None, seed: int = 0,
              prompt_format: str = "world", trust_remote_code: bool = False,
              step_token_init: str | None = None, surprisal: bool = False,
              head_hidden: int = 0, surprisal_reference: bool = False,
              standard: bool = False, step_separator: str | None = None,
              hidden_state: bool = True) -> tuple[ProcessRewardModel, object]:
    """A fresh PRM on ``base_model``: the step token is added if the tokenizer lacks it.

    ``standard``: the head vLLM and transformers serve without custom code
    (``Qwen2ForProcessRewardModel``: Linear(h, h) -> ReLU -> Linear(h, 2) on the final
    hidden state, no surprisal features), so the PRM can be exported by
    :func:`prmforge.prm.export.export_qwen2_prm`; overrides head, surprisal and head_hidden.

    ``step_token_init``: text whose (single-token) embedding the step token starts from
    (see :func:`init_step_embedding`); None keeps the backbone's own.

    ``step_separator``: with ``surprisal``, steps are encoded as the policy wrote
    them, joined by this text (:func:`prmforge.prm.data.written_step_ids`); other
    heads always encode each step alone. ``hidden_state`` False: the head reads
    the surprisal features only (needs ``surprisal``).
    """
    torch.manual_seed(seed)
    if standard:
        head, surprisal, surprisal_reference = "two_class", False, False
    backbone, tok = load_backbone(base_model, trust_remote_code, causal_lm=surprisal)
    if standard:
        head_hidden = int(backbone.config.hidden_size)
    tid = ensure_step_token(tok, backbone)
    init_step_embedding(tok, backbone, tid, step_token_init)
    reference = None
    if surprisal and surprisal_reference:
        import copy

        reference = copy.deepcopy(backbone)  # the base LM as the PRM starts, step token included
    limit = getattr(backbone.config, "max_position_embeddings", None)
    if limit:  # never format past what the backbone was built for; None = all of it
        max_length = min(max_length or int(limit), int(limit))
    max_length = max_length or 512
    cfg = PRMConfig(head=head, step_token=STEP_TOKEN, step_token_id=tid, max_length=max_length,
                    prompt_format=prompt_format, base_model=base_model,  # type: ignore[arg-type]
                    surprisal=surprisal, head_hidden=head_hidden,
                    surprisal_reference=surprisal and surprisal_reference,
                    head_act="relu" if standard else "gelu",
                    step_separator=step_separator if surprisal else None,
                    hidden_state=hidden_state or not surprisal)
    return ProcessRewardModel(backbone, cfg, seed=seed, reference=reference), tok


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
        encode_example(tokenizer, format_prompt(problem, cfg.prompt_format, tokenizer), list(steps), cfg.step_token_id,
                       max_length, separator=cfg.step_separator)
        for problem, steps in items
    ]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    out: list[list[float]] = [[] for _ in encoded]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = collate([encoded[i] for i in idx], pad)
        logits = model(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                       batch["step_mask"].to(device))
        probs = model.probabilities(logits).cpu()
        for row, i in enumerate(idx):
            ex = encoded[i]
            scores = [float(probs[row, p]) for p in ex.step_positions]
            out[i] = scores + [math.nan] * ex.n_dropped_steps
    return out
