"""PRM checkpoint layouts other than this project's: how to encode a solution and read its step scores.

Why: ``prmforge evaluate`` compares this project's PRM with the PRMs everyone cites,
which come in three layouts, each read differently at each step:

* ``qwen2-prm`` -- ``Qwen2ForProcessRewardModel`` (Qwen2.5-Math-PRM, and this project's
  ``qwen2_prm/`` export): a score MLP on the hidden state at the step token, softmax,
  P(correct) = class 1. vLLM: STEP pooling on the step token. Its input is the one
  its model card gives (prompt format ``chat``): the messages system "Please reason
  step by step, and put your final answer within \\boxed{}.", user = the problem,
  assistant = every step followed by ``<extra_0>``, through the checkpoint's chat
  template (``add_generation_prompt=False``), scores read at each ``<extra_0>``. A
  checkpoint whose tokenizer has no chat template gets the problem and the tagged
  steps as they are (``raw``); this project's export (``prmforge_export.json``) is
  encoded exactly as its PRM was trained (``prompt_format`` there).
* ``math-shepherd`` -- a causal LM read at a step tag (``ки``): softmax over the logits of
  the good and bad tokens (``+``, ``-``) at the tag, P(correct) = P(good). vLLM strips a
  causal LM's LM head in its pooling runner, so ``returned_token_ids`` would index hidden
  units, not the vocabulary; the layout is served instead with ``convert: classify`` and
  ``hf_overrides: {"classifier_from_token": [bad, good], "method": "no_post_processing"}``,
  which makes the two LM-head rows a classifier, and STEP pooling at the tag.
* ``token-classify`` -- a TRL ``PRMTrainer`` checkpoint (``*ForTokenClassification``):
  each step is followed by a separator (``\\n``), and the step's label sits on the last
  token of step + separator; P(correct) = class 1. vLLM serves it as a classifier (its
  ``ForTokenClassification`` suffix picks ``convert: classify``) with ALL pooling, and the
  step rows are picked by position, since a separator may also occur inside a step.

Every layout encodes the same way for both backends (token ids, never text, reach vLLM),
drops whole trailing steps past the model's context and reports them as NaN.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from prmforge.errors import ConfigError
from prmforge.prm.export import EXPORT_INFO, QWEN2_PRM_ARCH

QWEN_STEP_TOKEN = "<extra_0>"  # the step tag of Qwen's official PRMs
# the system turn of the Qwen2.5-Math-PRM model card's input (and of Qwen2.5-Math-Instruct's prompts)
QWEN_PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
CHAT_FORMAT = "chat"  # the qwen2-prm model card's chat messages through the checkpoint's template
SHEPHERD_STEP_TAG, SHEPHERD_GOOD, SHEPHERD_BAD = "ки", "+", "-"  # Math-Shepherd's tag and label tokens
TRL_SEPARATOR = "\n"  # TRL PRMTrainer's default step_separator
LAYOUT_INFO = "prm_layout.json"  # optional: overrides of the tag/tokens/separator for a layout


@dataclass
class Encoded:
    """One solution as token ids, the positions its step scores are read at, and the steps dropped."""

    ids: list[int]
    positions: list[int]
    dropped: int


class Qwen2PRM(torch.nn.Module):
    """``Qwen2ForProcessRewardModel`` in plain transformers: Qwen2 backbone + score MLP, softmax at step tags."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        from safetensors.torch import load_file
        from transformers import AutoModel

        self.backbone = AutoModel.from_pretrained(folder, use_safetensors=True, dtype=torch.float32)
        h = self.backbone.config.hidden_size
        self.score = torch.nn.Sequential(torch.nn.Linear(h, h), torch.nn.ReLU(), torch.nn.Linear(h, 2))
        state: dict[str, torch.Tensor] = {}
        for path in sorted(folder.glob("*.safetensors")):
            state.update({k[len("score."):]: v for k, v in load_file(str(path)).items() if k.startswith("score.")})
        self.score.load_state_dict(state)
        self.eval()

    @torch.no_grad()
    def step_probs(self, ids: list[int], step_token_id: int) -> list[float]:
        """P(correct) at every ``step_token_id`` of ``ids``."""
        x = torch.tensor([ids])
        probs = torch.softmax(self.score(self.backbone(input_ids=x).last_hidden_state), dim=-1)[0, :, 1]
        return [float(probs[i]) for i, t in enumerate(ids) if t == step_token_id]


@dataclass
class Layout:
    """A PRM folder in one external layout: how to encode, score with transformers, and start vLLM."""

    fmt: str
    folder: Path
    tokenizer: Any
    max_length: int
    vllm_options: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt_format(self) -> str:
        """How the problem is presented: ``chat`` (the qwen2-prm model card's), ``world`` or ``raw`` (as is)."""
        return str(self.info.get("prompt_format", "raw"))

    # ---- encoding ---------------------------------------------------------------
    def _enc(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode(self, problem: str, steps: Sequence[str]) -> Encoded:
        """Token ids of ``problem`` and ``steps`` in this layout; steps past ``max_length`` are dropped."""
        tok = self.tokenizer
        if self.fmt == "qwen2-prm" and self.prompt_format == CHAT_FORMAT:
            return self._encode_chat(problem, steps)
        if self.fmt == "qwen2-prm":  # exactly as this project's PRM encodes, so both layouts see the same ids
            from prmforge.prm.data import encode_example
            from prmforge.prm.model import format_prompt

            ex = encode_example(tok, format_prompt(problem, self.info["prompt_format"], tok), list(steps),
                                int(self.info["step_token_id"]), self.max_length)
            return Encoded(ex.input_ids, ex.step_positions, ex.n_dropped_steps)
        ids: list[int] = [tok.bos_token_id] if tok.bos_token_id is not None else []
        ids += self._enc(problem + " " if self.fmt == "math-shepherd" else problem)
        positions: list[int] = []
        for i, step in enumerate(steps):
            piece = self._step_ids(i, step)
            if len(ids) + len(piece) > self.max_length:
                break
            ids += piece
            positions.append(len(ids) - 1)
        if len(ids) > self.max_length:  # the problem alone does not fit
            ids, positions = ids[: self.max_length], []
        return Encoded(ids, positions, len(steps) - len(positions))

    def _encode_chat(self, problem: str, steps: Sequence[str]) -> Encoded:
        """The Qwen2.5-Math-PRM model card's input: its three messages through the chat template, encoded whole.

        A step never holds the tag itself (it would be read as the end of a step). The text
        between two tags is encoded the same whatever follows, so a solution too long for
        ``max_length`` keeps the ids up to its last whole tagged step and the rest count as dropped.
        """
        tag, tag_id = self.info["step_token"], int(self.info["step_token_id"])
        messages = [{"role": "system", "content": QWEN_PRM_SYSTEM}, {"role": "user", "content": problem},
                    {"role": "assistant", "content": "".join(s.replace(tag, "") + tag for s in steps)}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        ids = list(self.tokenizer(text)["input_ids"])  # as the card: tokenizer.encode(conversation_str)
        positions = [i for i, t in enumerate(ids) if t == tag_id]
        if len(positions) != len(steps):
            raise ValueError(f"{self.folder}: the chat template kept {len(positions)} of {len(steps)} step tags")
        kept = [p for p in positions if p < self.max_length]
        if len(ids) > self.max_length:
            ids = ids[: kept[-1] + 1] if kept else ids[: self.max_length]
        return Encoded(ids, kept, len(steps) - len(kept))

    def _step_ids(self, i: int, step: str) -> list[int]:
        if self.fmt == "math-shepherd":  # "question step1 ки\nstep2 ки", the tag never inside a step
            tag = int(self.info["step_token_id"])
            return [t for t in self._enc(("\n" if i else "") + step.strip() + " ") if t != tag] + [tag]
        return self._enc(step + self.info["separator"])  # token-classify: read at the last token

    # ---- transformers -------------------------------------------------------------
    def hf_scores(self, encoded: Sequence[Encoded]) -> list[list[float]]:
        """P(correct) per kept step with transformers, NaN for each dropped step."""
        model = self._hf_model()
        out = []
        with torch.no_grad():
            for e in encoded:
                probs = self._hf_probs(model, e) if e.positions else []
                out.append(probs + [math.nan] * e.dropped)
        return out

    def _hf_model(self):
        from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

        if self.fmt == "qwen2-prm":
            return Qwen2PRM(self.folder)
        cls = AutoModelForCausalLM if self.fmt == "math-shepherd" else AutoModelForTokenClassification
        return cls.from_pretrained(self.folder, use_safetensors=True, dtype=torch.float32).eval()

    def _hf_probs(self, model, e: Encoded) -> list[float]:
        if self.fmt == "qwen2-prm":
            return model.step_probs(e.ids, int(self.info["step_token_id"]))
        logits = model(input_ids=torch.tensor([e.ids])).logits[0, e.positions].float()
        if self.fmt == "math-shepherd":
            logits = logits[:, [self.info["bad_token_id"], self.info["good_token_id"]]]
        return [float(p) for p in torch.softmax(logits, dim=-1)[:, 1]]

    # ---- vLLM ------------------------------------------------------------------------
    def vllm_scores(self, encoded: Sequence[Encoded]) -> list[list[float]]:
        """P(correct) per kept step through vLLM's pooling runner (a worker process), NaN for dropped steps."""
        from prmforge.prm.vllm_score import VLLMPRMScorer

        keep = [i for i, e in enumerate(encoded) if e.positions]
        with VLLMPRMScorer(str(self.folder), max_model_len=self.max_length, **self.vllm_options) as scorer:
            positions = [encoded[i].positions for i in keep] if self.vllm_options.get("pooling") == "ALL" else None
            probs = scorer.score_ids([encoded[i].ids for i in keep], positions)
        got = dict(zip(keep, probs, strict=True))
        return [got.get(i, []) + [math.nan] * e.dropped for i, e in enumerate(encoded)]


def _config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def detect_format(folder: Path) -> str:
    """``prmforge``, ``qwen2-prm``, ``token-classify`` or ``math-shepherd`` from the folder's files.

    A ``prm_layout.json`` with ``"layout"`` wins; otherwise this project's ``prm_config.json``,
    then ``config.json``'s architectures: ``Qwen2ForProcessRewardModel``, ``*ForTokenClassification``,
    ``*ForCausalLM`` whose tokenizer has the Math-Shepherd step tag.
    """
    from prmforge.prm.model import CONFIG_FILE

    info_path = folder / LAYOUT_INFO
    if info_path.is_file():
        return str(json.loads(info_path.read_text())["layout"])
    if (folder / CONFIG_FILE).is_file():
        return "prmforge"
    archs = _config(folder).get("architectures") or []
    if QWEN2_PRM_ARCH in archs:
        return "qwen2-prm"
    if any(a.endswith("ForTokenClassification") for a in archs):
        return "token-classify"
    if any(a.endswith("ForCausalLM") for a in archs):
        return "math-shepherd"
    raise ConfigError(f"{folder} is not a PRM folder in a known layout (prmforge {CONFIG_FILE}, {QWEN2_PRM_ARCH}, "
                      f"*ForTokenClassification, *ForCausalLM for Math-Shepherd; architectures {archs}); pass --format")


def _token_id(tokenizer, text: str, what: str, folder: Path) -> int:
    """The id of ``text`` as the last token of its encoding (how Math-Shepherd finds its tag and labels)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids or (len(ids) > 1 and tokenizer.convert_tokens_to_ids(text) in (None, tokenizer.unk_token_id)):
        raise ConfigError(f"{folder}: the tokenizer has no single token for the {what} {text!r}")
    tid = tokenizer.convert_tokens_to_ids(text)
    return int(tid) if tid not in (None, tokenizer.unk_token_id) else int(ids[-1])


def context_length(folder: Path, tokenizer) -> int:
    """The most positions the model in ``folder`` takes (config.json), else the tokenizer's limit."""
    cfg = _config(folder)
    for name in ("max_position_embeddings", "n_positions", "max_seq_len"):
        if isinstance(cfg.get(name), int) and cfg[name] > 0:
            return int(cfg[name])
    return int(min(tokenizer.model_max_length or 4096, 1 << 20))


def open_layout(folder: Path, fmt: str) -> Layout:
    """The :class:`Layout` of ``folder`` read as ``fmt`` (qwen2-prm, math-shepherd or token-classify)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    extra = json.loads((folder / LAYOUT_INFO).read_text()) if (folder / LAYOUT_INFO).is_file() else {}
    if fmt == "qwen2-prm":
        export = json.loads((folder / EXPORT_INFO).read_text()) if (folder / EXPORT_INFO).is_file() else {}
        step = export.get("step_token") or extra.get("step_token") or QWEN_STEP_TOKEN
        tid = tok.convert_tokens_to_ids(step)
        if tid is None or tid == tok.unk_token_id:
            raise ConfigError(f"{folder}: the tokenizer has no step token {step!r}")
        # this project's export: encoded as its PRM was trained; another checkpoint: as its model card says
        # (the chat template), or, when its tokenizer has none, the problem and tagged steps as they are
        fmt_in = export.get("prompt_format", "raw") if export else CHAT_FORMAT if tok.chat_template else "raw"
        info = {"step_token": step, "step_token_id": int(tid), "prompt_format": fmt_in}
        max_len = int(export.get("max_length") or context_length(folder, tok))
        opts = {"step_token_id": int(tid), "pooling": "STEP", "returned_token_ids": [0, 1], "label_index": 1}
        return Layout(fmt, folder, tok, max_len, opts, info)
    if fmt == "math-shepherd":
        tag, good, bad = (extra.get("step_tag", SHEPHERD_STEP_TAG), extra.get("good_token", SHEPHERD_GOOD),
                          extra.get("bad_token", SHEPHERD_BAD))
        info = {"step_token_id": _token_id(tok, tag, "step tag", folder),
                "good_token_id": _token_id(tok, good, "good token", folder),
                "bad_token_id": _token_id(tok, bad, "bad token", folder)}
        tokens = tok.convert_ids_to_tokens([info["bad_token_id"], info["good_token_id"]])
        opts = {"step_token_id": info["step_token_id"], "pooling": "STEP", "returned_token_ids": None,
                "convert": "classify", "label_index": 1,
                "hf_overrides": {"classifier_from_token": tokens, "method": "no_post_processing"}}
        return Layout(fmt, folder, tok, context_length(folder, tok), opts, info)
    if fmt == "token-classify":
        info = {"separator": extra.get("separator", TRL_SEPARATOR)}
        opts = {"pooling": "ALL", "returned_token_ids": None, "label_index": 1}
        return Layout(fmt, folder, tok, context_length(folder, tok), opts, info)
    raise ConfigError(f"unknown PRM layout {fmt!r}")
