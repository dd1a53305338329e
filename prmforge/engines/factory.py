"""Engine selection by configuration: one ``EngineConfig`` -> one ``Engine``.

The backend modules are imported only when chosen, so a CPU-only install never
imports vLLM and an HF run never needs an HTTP client.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from prmforge.engines.base import Engine


class EngineConfig(BaseModel):
    """Everything any backend needs; each backend reads its own fields. An unknown key is an error."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["hf", "vllm", "openai"] = Field("hf", description="transformers in-process (hf), a vLLM "
                                                      "worker process (vllm) or an OpenAI-compatible server")
    model: str = Field("", description="hub id, local folder, file:// or s3:// URI, or the served model name")
    # hf / vllm
    device: str = Field("auto", description="hf: torch device ('auto' = cuda when available, else cpu)")
    dtype: str = Field("auto", description="hf/vllm: weight dtype ('auto' = the checkpoint's; 'float32', "
                       "'bfloat16', ...)")
    batch_size: int = Field(256, gt=0, description="hf: rows (prompt x sample) decoded together")
    trust_remote_code: bool = Field(False, description="hf/vllm: run modeling code shipped with the model; "
                                    "only for models you trust")
    num_threads: int | None = Field(None, description="hf on CPU: torch threads (None = torch default)")
    tensor_parallel_size: int = Field(1, gt=0, description="vllm: GPUs one model is split across")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="vllm on GPU: share of GPU memory "
                                          "for weights and KV cache")
    max_model_len: int | None = Field(None, gt=0, description="vllm: context length (None = the model's; "
                                      "lower it to fit the KV cache); openai: the served model's context, to skip "
                                      "prompts that do not fit")
    # vllm
    enforce_eager: bool = Field(False, description="vllm: skip torch.compile / CUDA graphs (faster start, slower steps)")
    enable_prefix_caching: bool = Field(True, description="vllm: reuse a prompt's KV blocks across samples and prefixes")
    max_num_seqs: int | None = Field(None, gt=0, description="vllm: sequences scheduled together (None = vLLM default)")
    cpu_kv_cache_gib: float = Field(1.0, gt=0, description="vllm on CPU: KV cache size in GiB (RAM)")
    cpu_threads_bind: str = Field("auto", description="vllm on CPU: VLLM_CPU_OMP_THREADS_BIND ('auto', '0-3', 'nobind')")
    # openai
    base_url: str = Field("http://127.0.0.1:8000/v1", description="openai: the server's /v1 URL")
    api_key_env: str = Field("OPENAI_API_KEY", description="NAME of the env var holding the API key")
    max_concurrency: int = Field(16, gt=0, description="openai: requests in flight at once")
    timeout_s: float = Field(60.0, gt=0, description="openai: seconds before one request is abandoned")
    max_retries: int = Field(4, ge=0, description="openai: retries of a failed request (backoff between)")
    tokenizer: str = Field("", description="openai: a local copy of the served model's tokenizer (folder, URI or "
                           "hub id); with max_model_len, prompts that do not fit are skipped before any request")
    chat_endpoint: bool = Field(False, description="openai: send each prompt as the one user message of "
                                "/v1/chat/completions, so the server applies the served model's chat template "
                                "(the prompt must not be templated already); else /v1/completions, text as is")

    def identity(self) -> dict:
        """The fields that change sampled text (part of resumable run keys)."""
        keys = {"hf": ["device", "dtype"], "vllm": ["dtype", "tensor_parallel_size"], "openai": ["base_url"]}
        identity = {"backend": self.backend, "model": self.model, **{k: getattr(self, k) for k in keys[self.backend]}}
        if self.backend == "openai" and self.chat_endpoint:  # only when set: the completions endpoint's keys stay
            identity["chat_endpoint"] = True
        return identity


def make_engine(cfg: EngineConfig) -> Engine:
    """Build the configured engine (loads the model / starts the worker)."""
    if not cfg.model:
        raise ValueError("engine model is empty: configure a model (or let the asset resolve the policy)")
    if cfg.backend == "hf":
        from prmforge.engines.hf import HFEngine

        return HFEngine(cfg.model, device=cfg.device, dtype=cfg.dtype, batch_size=cfg.batch_size,
                        trust_remote_code=cfg.trust_remote_code, num_threads=cfg.num_threads)
    if cfg.backend == "openai":
        from prmforge.engines.openai import OpenAIEngine

        return OpenAIEngine(cfg.model, base_url=cfg.base_url, api_key_env=cfg.api_key_env,
                            max_concurrency=cfg.max_concurrency, timeout_s=cfg.timeout_s,
                            max_retries=cfg.max_retries, tokenizer=cfg.tokenizer or None,
                            max_model_len=cfg.max_model_len, chat_endpoint=cfg.chat_endpoint)
    if cfg.backend == "vllm":
        from prmforge.engines.vllm import VLLMEngine

        return VLLMEngine(cfg.model, dtype=cfg.dtype, tensor_parallel_size=cfg.tensor_parallel_size,
                          gpu_memory_utilization=cfg.gpu_memory_utilization, max_model_len=cfg.max_model_len,
                          trust_remote_code=cfg.trust_remote_code, enforce_eager=cfg.enforce_eager,
                          enable_prefix_caching=cfg.enable_prefix_caching, max_num_seqs=cfg.max_num_seqs,
                          cpu_kv_cache_gib=cfg.cpu_kv_cache_gib, cpu_threads_bind=cfg.cpu_threads_bind)
    raise ValueError(f"unknown engine backend {cfg.backend!r}")
