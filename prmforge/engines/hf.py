"""Transformers backend: our own batched, KV-cached sampling loop.

Why not ``model.generate``: for the many-short-prompts workloads of this
project (rollouts, Monte-Carlo completions of many prefixes x K samples) its
per-step overhead, its per-sample prompt prefill and its growing-cache
concatenation dominate. This loop

* prefills each distinct prompt once and copies its KV into the rows of its
  ``n`` samples (left padding, attention mask and position ids handle prompts
  of different lengths in one batch);
* keeps K/V in preallocated static buffers (no per-step concatenation) and,
  for Llama-family models (llama, mistral, qwen2, qwen3), runs the decoder
  layers directly on those buffers; other architectures use the model's own
  forward with a ``DynamicCache``;
* drops finished rows from the batch as they finish (compaction);
* samples with counter-based randomness: the uniform number of row ``(prompt,
  sample j)`` at step ``t`` is a hash of ``(seed, prompt text, j, t)``. A
  sample therefore does not depend on which other prompts share its batch,
  on the batch size or on the order of prompts, which is what makes shards
  resumable and batched output equal to per-prompt output.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prmforge.engines.base import Completion, Engine, SamplingParams, skip_reason, skipped_completions
from prmforge.model_files import ModelSourceError, local_model

log = logging.getLogger(__name__)

_FAST_PATH_TYPES = {"llama", "mistral", "qwen2", "qwen3"}
_M32 = 0xFFFFFFFF


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError as exc:
        raise ValueError(f"unknown dtype {dtype!r}") from exc


# --------------------------------------------------------------------------
# randomness
# --------------------------------------------------------------------------
def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash on int64 tensors holding values in [0, 2^32)."""
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    return (x >> 16) ^ x


def row_key(seed: int, prompt: str, sample_index: int) -> int:
    """The random stream of one (prompt, sample) pair."""
    return int(hashlib.sha256(f"{seed}\x1f{sample_index}\x1f{prompt}".encode()).hexdigest()[:8], 16)


def _uniforms(keys: torch.Tensor, step: int) -> torch.Tensor:
    """One uniform in [0, 1) per row for decoding step ``step``."""
    x = _mix32(keys ^ ((step * 0x9E3779B1 + 0x7F4A7C15) & _M32))
    return (x >> 8).to(torch.float32) / float(1 << 24)


def sample_tokens(logits: torch.Tensor, keys: torch.Tensor, step: int, temperature: float, top_p: float) -> torch.Tensor:
    """Sample one token per row by inverse CDF on (top-p filtered) probabilities."""
    logits = logits.float()
    if temperature <= 0.0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    u = _uniforms(keys, step).to(probs.device)
    if top_p < 1.0:
        sp, si = probs.sort(dim=-1, descending=True, stable=True)
        keep = (sp.cumsum(-1) - sp) < top_p
        sp = sp * keep
        cdf = sp.cumsum(-1)
        idx = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1)).clamp_(max=sp.shape[1] - 1)
        return si.gather(1, idx).squeeze(1)
    cdf = probs.cumsum(-1)
    idx = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1)).clamp_(max=probs.shape[1] - 1)
    return idx.squeeze(1)


# --------------------------------------------------------------------------
# forward passes over a static cache
# --------------------------------------------------------------------------
class _LlamaStepper:
    """Runs Llama-family decoder layers with a shared prompt cache.

    Rows are a grid of ``P`` prompts x ``n`` samples. The prompt's K/V is
    stored once per prompt (never copied into its ``n`` rows): at each step the
    ``n`` queries of a prompt attend to it in one grouped matmul, and to their
    own generated tokens in a preallocated per-row buffer (no per-step
    concatenation). Both score blocks share one softmax, so the result is
    exactly attention over ``[prompt, generated]``.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.inner = model.model
        self.layers = list(self.inner.layers)
        self.apply_rope = sys.modules[type(self.layers[0].self_attn).__module__].apply_rotary_pos_emb
        cfg = model.config
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.gqa = self.kv_heads != self.heads

    def start(self, ids: torch.Tensor, valid: torch.Tensor, n: int, max_new: int) -> torch.Tensor:
        """Prefill ``ids`` (P, Lp, left padded); return first logits of the P*n rows."""
        P, Lp = ids.shape
        dev = ids.device
        pos = (valid.long().cumsum(-1) - 1).clamp_(min=0)
        causal = torch.tril(torch.ones(Lp, Lp, dtype=torch.bool, device=dev))
        mask = causal[None] & valid[:, None, :]
        mask |= torch.eye(Lp, dtype=torch.bool, device=dev)[None]  # pads see themselves: no NaN
        x = self.inner.embed_tokens(ids)
        cos, sin = self.inner.rotary_emb(x, pos)
        self.kp, self.vp = [], []
        for layer in self.layers:
            x, k, v = self._layer(layer, x, cos, sin, mask[:, None])
            self.kp.append(k.contiguous())
            self.vp.append(v.contiguous())
        logits = self.model.lm_head(self.inner.norm(x[:, -1:]))[:, 0]
        self.P, self.n = P, n
        B = P * n
        shape = (B, self.kv_heads, max(max_new, 1), self.head_dim)
        self.kg = [torch.empty(shape, dtype=x.dtype, device=dev) for _ in self.layers]
        self.vg = [torch.empty(shape, dtype=x.dtype, device=dev) for _ in self.layers]
        self.pmask = valid[:, None, None, :]  # (P, 1, 1, Lp)
        self.pos0 = pos[:, -1] + 1  # position of the first generated token, per prompt
        self.t = 0
        return logits.repeat_interleave(n, dim=0)

    def _layer(self, layer, x, cos, sin, mask, li: int | None = None):
        attn = layer.self_attn
        B, T, _ = x.shape
        h = layer.input_layernorm(x)
        q = attn.q_proj(h).view(B, T, -1, self.head_dim)
        k = attn.k_proj(h).view(B, T, -1, self.head_dim)
        v = attn.v_proj(h).view(B, T, -1, self.head_dim).transpose(1, 2)
        if hasattr(attn, "q_norm"):
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k = self.apply_rope(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
        if li is not None:
            o = self._decode_attention(li, q, k, v, attn.scaling)
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scaling, enable_gqa=self.gqa)
        x = x + attn.o_proj(o.transpose(1, 2).reshape(B, T, -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
        return x, k, v

    def _decode_attention(self, li: int, q, k, v, scale: float) -> torch.Tensor:
        """Attention of one new token per row over [shared prompt, own generated tokens].

        Plain batched matmuls: for a single query SDPA's CPU kernel tiles over
        (batch, head) pairs and was several times slower. Grouped-query heads
        fold into the query dimension, so K/V are never repeated.
        """
        P, n, KV, D = self.P, self.n, self.kv_heads, self.head_dim
        B, H = P * n, self.heads
        g = H // KV
        t = self.t
        kg, vg = self.kg[li], self.vg[li]
        kg[:, :, t] = k[:, :, 0]
        vg[:, :, t] = v[:, :, 0]
        kp, vp = self.kp[li], self.vp[li]
        Lp = kp.shape[2]
        # prompt block: the n samples of a prompt in one matmul
        qp = q.reshape(P, n, KV, g, D).transpose(1, 2).reshape(P, KV, n * g, D)
        s1 = torch.matmul(qp, kp.transpose(-1, -2)).masked_fill_(~self.pmask, float("-inf"))
        s1 = s1.view(P, KV, n, g, Lp).transpose(1, 2).reshape(B, KV, g, Lp)
        # generated block: per row
        qr = q.reshape(B, KV, g, D)
        s2 = torch.matmul(qr, kg[:, :, : t + 1].transpose(-1, -2))
        probs = torch.softmax(torch.cat([s1, s2], dim=-1).float() * scale, dim=-1).to(vp.dtype)
        p1 = probs[..., :Lp].reshape(P, n, KV, g, Lp).transpose(1, 2).reshape(P, KV, n * g, Lp)
        o1 = torch.matmul(p1, vp).view(P, KV, n, g, D).transpose(1, 2).reshape(B, KV, g, D)
        o2 = torch.matmul(probs[..., Lp:], vg[:, :, : t + 1])
        return (o1 + o2).reshape(B, H, 1, D)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row; return next-token logits (B, V)."""
        x = self.inner.embed_tokens(tokens[:, None])
        pos = (self.pos0 + self.t).repeat_interleave(self.n)[:, None]
        cos, sin = self.inner.rotary_emb(x, pos)
        for li, layer in enumerate(self.layers):
            x, _, _ = self._layer(layer, x, cos, sin, None, li)
        self.t += 1
        return self.model.lm_head(self.inner.norm(x))[:, 0]

    def select(self, keep_rows: torch.Tensor, keep_groups: torch.Tensor) -> None:
        """Keep only prompts ``keep_groups`` (and their rows ``keep_rows``)."""
        t = self.t
        self.kp = [b.index_select(0, keep_groups) for b in self.kp]
        self.vp = [b.index_select(0, keep_groups) for b in self.vp]
        self.kg = [self._take(b, keep_rows, t) for b in self.kg]
        self.vg = [self._take(b, keep_rows, t) for b in self.vg]
        self.pmask = self.pmask.index_select(0, keep_groups)
        self.pos0 = self.pos0.index_select(0, keep_groups)
        self.P = keep_groups.numel()

    @staticmethod
    def _take(buf: torch.Tensor, keep: torch.Tensor, t: int) -> torch.Tensor:
        out = torch.empty((keep.numel(),) + tuple(buf.shape[1:]), dtype=buf.dtype, device=buf.device)
        if t:
            out[:, :, :t] = buf[:, :, :t].index_select(0, keep)
        return out


class _GenericStepper:
    """Any causal LM through its own forward and a ``DynamicCache``."""

    def __init__(self, model: torch.nn.Module) -> None:
        import inspect

        self.model = model
        # transformers >= 5.x renamed ``past_key_values`` to ``cache``
        self.cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def start(self, ids: torch.Tensor, valid: torch.Tensor, n: int, max_new: int) -> torch.Tensor:
        from transformers import DynamicCache

        pos = (valid.long().cumsum(-1) - 1).clamp_(min=0)
        self.cache = DynamicCache()
        out = self.model(input_ids=ids, attention_mask=valid.long(), position_ids=pos,
                         use_cache=True, **{self.cache_kw: self.cache})
        self.cache.batch_repeat_interleave(n)
        self.mask = valid.long().repeat_interleave(n, dim=0)
        self.pos = (pos[:, -1] + 1).repeat_interleave(n, dim=0)
        return out.logits[:, -1].repeat_interleave(n, dim=0)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        out = self.model(input_ids=tokens[:, None], attention_mask=self.mask, position_ids=self.pos[:, None],
                         use_cache=True, **{self.cache_kw: self.cache})
        self.pos = self.pos + 1
        return out.logits[:, -1]

    def select(self, keep_rows: torch.Tensor, keep_groups: torch.Tensor) -> None:
        self.cache.batch_select_indices(keep_rows)
        self.mask = self.mask.index_select(0, keep_rows)
        self.pos = self.pos.index_select(0, keep_rows)


# --------------------------------------------------------------------------
# the engine
# --------------------------------------------------------------------------
@dataclass
class _Row:
    prompt_index: int
    sample_index: int


class HFEngine(Engine):
    """A transformers causal LM (hub id, local folder, ``file://`` or ``s3://``) on CPU or CUDA."""

    def __init__(
        self,
        model: str,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 256,
        trust_remote_code: bool = False,
        add_special_tokens: bool = True,
        fast_path: bool = True,
        num_threads: int | None = None,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if num_threads:
            # On a shared CPU, one thread per process is often fastest (OpenMP
            # barriers stall when a core is taken); None keeps torch's default.
            torch.set_num_threads(num_threads)

        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        self.model_id = model
        self.batch_size = batch_size
        self.add_special_tokens = add_special_tokens
        self.device = _pick_device(device)
        self.dtype = _pick_dtype(dtype, self.device)
        path, local_only = local_model(model)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **local_only)
            self.model = AutoModelForCausalLM.from_pretrained(
                path, use_safetensors=True, dtype=self.dtype, trust_remote_code=trust_remote_code, **local_only
            )
        except (OSError, ValueError) as exc:
            raise ModelSourceError(f"could not load model {model!r} (safetensors only, no download): {exc}") from exc
        self.model.to(self.device).eval()
        cfg = self.model.config
        self.max_positions = int(getattr(cfg, "max_position_embeddings", 0) or 0) or None
        self.eos_ids = self._eos_ids()
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = next(iter(self.eos_ids), 0)
        sliding = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
        self.fast = (
            fast_path and cfg.model_type in _FAST_PATH_TYPES and hasattr(self.model, "model")
            and (sliding is None or sliding >= (self.max_positions or 0))
        )
        self._stop_cache: dict[tuple[str, ...], torch.Tensor] = {}

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for src in (getattr(self.model, "generation_config", None), self.model.config):
            e = getattr(src, "eos_token_id", None) if src is not None else None
            if isinstance(e, int):
                ids.add(e)
            elif isinstance(e, list | tuple):
                ids.update(int(x) for x in e)
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return ids

    # ---- stop strings ------------------------------------------------------
    def _stop_flags(self, stop: tuple[str, ...]) -> torch.Tensor:
        """Per vocab id: could this token complete a stop string? (only those rows are decoded)."""
        if stop not in self._stop_cache:
            lasts = {s[-1] for s in stop if s}
            vocab = len(self.tokenizer)
            size = max(vocab, self.model.get_output_embeddings().weight.shape[0])
            flags = torch.zeros(size, dtype=torch.bool)
            texts = self.tokenizer.batch_decode([[i] for i in range(vocab)])
            for i, t in enumerate(texts):
                if not t or "\ufffd" in t or any(c in t for c in lasts):
                    flags[i] = True
            flags[vocab:] = True
            self._stop_cache[stop] = flags.to(self.device)
        return self._stop_cache[stop]

    # ---- generation ----------------------------------------------------------
    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Completion]]:
        if params.n <= 0:
            raise ValueError("n must be positive")
        results: list[list[Completion | None]] = [[None] * params.n for _ in prompts]
        encoded = self.tokenizer(list(prompts), add_special_tokens=self.add_special_tokens)["input_ids"]
        ok: list[int] = []
        for i, ids in enumerate(encoded):
            why = skip_reason(len(ids), params.max_tokens, self.max_positions)
            if why is not None:
                results[i] = skipped_completions(params.n, len(ids), why)  # type: ignore[assignment]
            else:
                ok.append(i)
        # Sorting by length cuts padding; sampling is order-independent by construction.
        ok.sort(key=lambda i: len(encoded[i]))
        per_chunk = max(1, self.batch_size // params.n)
        samples_per_prefill = min(params.n, self.batch_size)
        with torch.inference_mode():
            for c in range(0, len(ok), per_chunk):
                chunk = ok[c : c + per_chunk]
                for s0 in range(0, params.n, samples_per_prefill):
                    js = list(range(s0, min(params.n, s0 + samples_per_prefill)))
                    out = self._run_chunk(prompts, encoded, chunk, js, params)
                    for (i, j), comp in out.items():
                        results[i][j] = comp
        return [[c for c in row if c is not None] for row in results]

    def _run_chunk(self, prompts, encoded, chunk: list[int], js: list[int], params: SamplingParams):
        dev = self.device
        n = len(js)
        Lp = max(len(encoded[i]) for i in chunk)
        ids = torch.full((len(chunk), Lp), self.pad_id, dtype=torch.long)
        valid = torch.zeros((len(chunk), Lp), dtype=torch.bool)
        for r, i in enumerate(chunk):
            e = encoded[i]
            ids[r, Lp - len(e):] = torch.tensor(e, dtype=torch.long)
            valid[r, Lp - len(e):] = True
        ids, valid = ids.to(dev), valid.to(dev)
        rows = [_Row(i, j) for i in chunk for j in js]
        B = len(rows)
        keys = torch.tensor([row_key(params.seed, prompts[r.prompt_index], params.sample_offset + r.sample_index)
                             for r in rows], dtype=torch.long, device=dev)
        T = params.max_tokens
        stepper = _LlamaStepper(self.model) if self.fast else _GenericStepper(self.model)
        logits = stepper.start(ids, valid, n, T)
        gen = torch.full((B, max(T, 1)), self.pad_id, dtype=torch.long, device=dev)
        lengths = torch.zeros(B, dtype=torch.long)
        finish = ["length"] * B
        alive = torch.arange(B, device=dev)  # original row of each live batch row
        eos = torch.tensor(sorted(self.eos_ids), dtype=torch.long, device=dev)
        stop = tuple(s for s in params.stop if s)
        flags = self._stop_flags(stop) if stop else None
        tail = max((len(s) for s in stop), default=0) + 4
        live_done = torch.zeros(B, dtype=torch.bool, device=dev)  # finished rows still in the batch
        for t in range(T):
            tok = sample_tokens(logits, keys, t, params.temperature, params.top_p)
            act = ~live_done
            act_idx = act.nonzero().flatten()
            gen[alive[act_idx], t] = tok[act_idx]
            newly = (torch.isin(tok, eos) & act) if eos.numel() else torch.zeros_like(act)
            if flags is not None:
                cand = (flags[tok] & act & ~newly).nonzero().flatten().tolist()
                if cand:
                    start = max(0, t + 1 - tail)
                    texts = self.tokenizer.batch_decode(gen[alive[cand], start : t + 1].tolist(),
                                                        skip_special_tokens=True)
                    hit = [k for k, txt in zip(cand, texts, strict=True) if any(s in txt for s in stop)]
                    if hit:
                        newly[hit] = True
            for r in alive[newly].tolist():
                finish[r] = "stop"
                lengths[r] = t + 1
            live_done |= newly
            n_active = int((~live_done).sum())
            if t == T - 1 or n_active == 0:
                for r in alive[~live_done].tolist():
                    lengths[r] = t + 1
                break
            # Rows form a grid of prompts x n samples; drop prompts whose samples
            # have all finished once enough have, so copying the cache pays off.
            groups_alive = (~live_done).view(-1, n).any(dim=1)
            n_groups = int(groups_alive.sum())
            if n_groups <= 0.7 * groups_alive.numel():
                keep_groups = groups_alive.nonzero().flatten()
                keep = (keep_groups[:, None] * n + torch.arange(n, device=dev)[None]).flatten()
                alive, keys, tok, live_done = alive[keep], keys[keep], tok[keep], live_done[keep]
                stepper.select(keep, keep_groups)
            logits = stepper.step(tok)
        gen_cpu = gen.cpu()
        out = {}
        for b, r in enumerate(rows):
            toks = gen_cpu[b, : int(lengths[b])].tolist()
            if finish[b] == "stop" and toks and toks[-1] in self.eos_ids:
                text_toks = toks[:-1]
            else:
                text_toks = toks
            text = self.tokenizer.decode(text_toks, skip_special_tokens=True)
            reason = finish[b]
            cut = min((p for p in (text.find(s) for s in stop) if p >= 0), default=-1)
            if cut >= 0:
                text, reason = text[:cut], "stop"
            out[(r.prompt_index, r.sample_index)] = Completion(
                text=text, prompt_tokens=len(encoded[r.prompt_index]), completion_tokens=len(toks),
                finish_reason=reason,
            )
        return out

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

