"""Named run profiles: sizes and budgets for every stage.

``tiny`` keeps tests to seconds, ``demo`` is the README's main job (nothing
to a registered champion in minutes on 2 CPU cores) and ``world`` is the
quality run (up to an hour on 2 cores). Each stage declares its own pydantic
settings class with ``demo`` defaults; a profile only lists what it changes.
Run config in Dagster overrides both.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

from pydantic import BaseModel

T = TypeVar("T", bound=BaseModel)

DEFAULT_PROFILE = "demo"

# profile -> stage -> field overrides. Demo defaults live in each stage's settings class
# (prmforge.ingest, prmforge.rollouts, prmforge.labeling.settings, prmforge.policy, prmforge.prm.settings).
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        # World seed problems are `easy`, the tiny policy's difficulty; token budgets let an `easy`
        # solution (<= ~60 tokens) finish, so rollouts, MC continuations and Best-of-N reach answers.
        "ingest": {"world_size": 24, "world_difficulty": "easy"},
        # The smallest quick policy that is usable on `easy` (measured: 37% at T=1.0 on 200 held-out
        # problems, 800 steps in ~60 s on one core; see docs/world-policy.md). Trained once per pytest
        # session (PRMFORGE_POLICY_CACHE, tests/conftest.py).
        "policy": {"n_train_problems": 4000, "tokenizer_problems": 500, "hidden_size": 64,
                   "intermediate_size": 192, "num_layers": 2, "num_heads": 2, "train_steps": 800,
                   "learning_rate": 0.01, "warmup_steps": 50, "calib_problems": 100, "max_new_tokens": 96},
        "world_benchmark": {"n_problems": 40, "samples_per_problem": 2, "size": 40, "max_new_tokens": 96},
        "rollouts": {"n": 2, "max_tokens": 96, "shard_size": 4, "max_problems": 12},
        "mc_step_labels": {"k": 2, "max_tokens": 96, "shard_size": 4, "batch_prefixes": 16},
        "judge_step_labels": {"max_tokens": 32, "shard_size": 4},
        "prm_model": {"epochs": 1.0, "max_steps": None, "micro_batch_size": 8, "max_length": 128,
                      "checkpoint_every": 5},
        "prm_evaluation": {"bon_n": 2, "bon_problems": 3, "bon_max_tokens": 96, "max_samples_per_subset": 40},
    },
    "demo": {
        # The demo policy learns the `easy` world (52% at T=1.0; 10% on `standard`), so the demo's
        # world seed problems, which it rolls out on, are `easy` too.
        "ingest": {"world_difficulty": "easy"},
    },
    "world": {
        # The demo's policy (same settings, so one training serves both; easy world, 52% at
        # T=1.0) rolled out 8 times on 1,500 problems: ~12,000 labelled rollouts, 20x the demo's.
        "ingest": {"world_size": 1500, "world_difficulty": "easy"},
        # The PRM starts from a stronger sibling of the policy (same model, trained 2,000 steps
        # instead of 600: 96% vs 52% at T=1.0), a verifier that knows the arithmetic the policy
        # gets wrong. Starting from the policy itself, Best-of-8 stayed at majority@8 (docs/prm.md).
        "prm_base": {"train_steps": 2000, "n_train_problems": 40000},
        "world_benchmark": {"n_problems": 1000, "samples_per_problem": 4, "size": 2000},
        "rollouts": {"n": 8, "shard_size": 128},
        "mc_step_labels": {"k": 8, "shard_size": 256, "batch_prefixes": 256},
        "prm_model": {"epochs": 3.0, "max_steps": None, "micro_batch_size": 32,
                      "checkpoint_every": 100},
        "prm_evaluation": {"bon_n": 8, "bon_problems": 200, "max_samples_per_subset": None},
    },
}


def active_profile() -> str:
    """``PRMFORGE_PROFILE`` or ``demo``."""
    name = os.environ.get("PRMFORGE_PROFILE", DEFAULT_PROFILE)
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; known: {sorted(PROFILES)}")
    return name


def stage_settings(cls: type[T], stage: str, profile: str | None = None, **overrides: Any) -> T:
    """Build ``cls`` from its defaults, the profile's entries, then overrides.

    Overrides whose value is None are ignored, so Dagster ``Config`` fields
    default to None meaning "take the profile's value".
    """
    profile = profile or active_profile()
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known: {sorted(PROFILES)}")
    values = dict(PROFILES[profile].get(stage, {}))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)
