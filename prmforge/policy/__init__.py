"""The bootstrap policy: a small Llama (or Qwen2) trained from scratch on gold world solutions."""

from prmforge.policy.settings import POLICY_CODE_VERSION, PolicySettings

__all__ = ["POLICY_CODE_VERSION", "PolicySettings"]
