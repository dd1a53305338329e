"""Named run profiles and the settings class of every stage.

``tiny`` keeps tests to seconds, ``demo`` is the README's main job (nothing
to a registered champion in minutes on 2 CPU cores) and ``world`` is the
quality run (up to an hour on 2 cores).

A *stage* is named by its asset (``seed_problems`` stands for its multi-asset).
Each stage has one settings class (:data:`STAGE_SETTINGS`) holding the
``demo`` defaults; a profile lists only what it changes, keyed by the same
asset names, and Dagster run config (generated from the same classes,
``resources.settings``) overrides both. ``tests/test_settings.py`` builds
every profile x stage, so a misspelt stage or field fails the suite.

``python -m prmforge.profiles > docs/settings.md`` writes the reference of
every stage's fields and each profile's values.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from pydantic import BaseModel

from prmforge.config import StageSettings
from prmforge.env import profile_name
from prmforge.ingest.settings import IngestSettings
from prmforge.labeling.settings import ConsensusSettings, JudgeSettings, MCSettings
from prmforge.policy.benchmark import BenchmarkSettings
from prmforge.policy.settings import PolicySettings
from prmforge.prm.settings import PRMEvalSettings, PRMRegistrySettings, PRMTrainSettings
from prmforge.rollouts import RolloutSettings

# asset name -> its settings class, in pipeline order
STAGE_SETTINGS: dict[str, type[StageSettings]] = {
    "seed_problems": IngestSettings,
    "policy_model": PolicySettings,
    "prm_base_model": PolicySettings,
    "world_benchmark": BenchmarkSettings,
    "policy_rollouts": RolloutSettings,
    "mc_step_labels": MCSettings,
    "judge_step_labels": JudgeSettings,
    "consensus_labels": ConsensusSettings,
    "prm_model": PRMTrainSettings,
    "prm_evaluation": PRMEvalSettings,
    "registered_prm": PRMRegistrySettings,
}

# A stage whose profile entries start from another stage's: the PRM's base LM is the
# policy's settings plus the profile's prm_base_model entries (none: it *is* the policy).
STAGE_BASE: dict[str, str] = {"prm_base_model": "policy_model"}

# profile -> stage (asset name) -> field overrides. Demo defaults live in each stage's settings class.
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        # World seed problems are `easy`, the tiny policy's difficulty; token budgets let an `easy`
        # solution (<= ~60 tokens) finish, so rollouts, MC continuations and Best-of-N reach answers.
        "seed_problems": {"world_size": 24, "world_difficulty": "easy"},
        # The smallest quick policy that is usable on `easy` (measured: 37% at T=1.0 on 200 held-out
        # problems, 800 steps in ~60 s on one core; see docs/world-policy.md). Trained once per pytest
        # session (PRMFORGE_POLICY_CACHE, tests/conftest.py).
        "policy_model": {"architecture": "llama", "n_train_problems": 4000, "tokenizer_problems": 500, "hidden_size": 64,
                         "intermediate_size": 192, "num_layers": 2, "num_heads": 2, "train_steps": 800,
                         "learning_rate": 0.01, "warmup_steps": 50, "calib_problems": 100, "max_new_tokens": 96},
        "world_benchmark": {"n_problems": 40, "samples_per_problem": 2, "size": 40, "max_new_tokens": 96},
        "policy_rollouts": {"n": 2, "max_tokens": 96, "shard_size": 4, "max_problems": 12},
        "mc_step_labels": {"k": 2, "max_tokens": 96, "shard_size": 4, "batch_prefixes": 16},
        "judge_step_labels": {"max_tokens": 32, "shard_size": 4},
        "prm_model": {"epochs": 1.0, "max_steps": None, "micro_batch_size": 8, "max_length": 128,
                      "checkpoint_every": 5},
        "prm_evaluation": {"bon_n": 2, "bon_problems": 3, "bon_max_tokens": 96, "max_samples_per_subset": 40},
    },
    "real": {
        # Real GSM8K and MATH text (the bundled gsm8k_test_sample / math_test_sample, or your own)
        # through every stage with the embedded policy, sized like `tiny`: it checks what each stage
        # does with real text (rows in and out, skipped prompts, steps per solution, unscored steps,
        # time per stage), not quality: a world policy does not solve GSM8K. The policy is the tiny one
        # (2,048 positions, like every embedded policy: real prompts fit) and rolls out every problem.
        "seed_problems": {"world_size": 24, "world_difficulty": "easy"},
        "policy_model": {"architecture": "llama", "n_train_problems": 4000, "tokenizer_problems": 500, "hidden_size": 64,
                         "intermediate_size": 192, "num_layers": 2, "num_heads": 2, "train_steps": 800,
                         "learning_rate": 0.01, "warmup_steps": 50, "calib_problems": 100, "max_new_tokens": 96},
        "world_benchmark": {"n_problems": 40, "samples_per_problem": 2, "size": 40, "max_new_tokens": 96},
        "policy_rollouts": {"n": 2, "max_tokens": 96, "shard_size": 4},
        "mc_step_labels": {"k": 2, "max_tokens": 96, "shard_size": 4, "batch_prefixes": 16},
        "judge_step_labels": {"max_tokens": 32, "shard_size": 4},
        "prm_model": {"epochs": 1.0, "max_steps": None, "micro_batch_size": 8, "checkpoint_every": 5},
        "prm_evaluation": {"bon_n": 2, "bon_problems": 3, "bon_max_tokens": 96},
    },
    "demo": {
        # The demo policy learns the `easy` world (52% at T=1.0; 10% on `standard`), so the demo's
        # world seed problems, which it rolls out on, are `easy` too.
        "seed_problems": {"world_difficulty": "easy"},
    },
    "world": {
        # The demo's policy (same settings, so one training serves both; the qwen2, easy world, 51% at
        # T=1.0) rolled out 8 times on 1,500 problems: ~12,000 labelled rollouts, 20x the demo's.
        "seed_problems": {"world_size": 1500, "world_difficulty": "easy"},
        # The PRM starts from a stronger sibling of the policy (same model, trained 2,000 steps
        # instead of 600: 96% vs 52% at T=1.0), a verifier that knows the arithmetic the policy
        # gets wrong. Starting from the policy itself, Best-of-8 stayed at majority@8 (docs/prm.md).
        "prm_base_model": {"train_steps": 2000, "n_train_problems": 40000},
        "world_benchmark": {"n_problems": 1000, "samples_per_problem": 4, "size": 2000},
        "policy_rollouts": {"n": 8, "shard_size": 128},
        "mc_step_labels": {"k": 8, "shard_size": 256, "batch_prefixes": 256},
        "prm_model": {"epochs": 3.0, "max_steps": None, "micro_batch_size": 32,
                      "checkpoint_every": 100},
        "prm_evaluation": {"bon_n": 8, "bon_problems": 200, "max_samples_per_subset": None},
    },
}


def active_profile() -> str:
    """``PRMFORGE_PROFILE`` or ``demo``."""
    name = profile_name()
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; known: {sorted(PROFILES)}")
    return name


def profile_values(stage: str, profile: str) -> dict[str, Any]:
    """The profile's entries for ``stage`` (its base stage's first)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known: {sorted(PROFILES)}")
    if stage not in STAGE_SETTINGS:
        raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGE_SETTINGS)}")
    base = STAGE_BASE.get(stage)
    values = profile_values(base, profile) if base else {}
    values.update(PROFILES[profile].get(stage, {}))
    return values


def stage_settings(stage: str, profile: str | None = None, **overrides: Any) -> StageSettings:
    """The settings of ``stage``: class defaults, then the profile's entries, then ``overrides``.

    Overrides whose value is None are ignored, so Dagster run config fields
    default to None meaning "take the profile's value".
    """
    values = profile_values(stage, profile or active_profile())
    values.update({k: v for k, v in overrides.items() if v is not None})
    return STAGE_SETTINGS[stage](**values)


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return re.sub(r"\b(?:typing|prmforge(?:\.\w+)*)\.", "", str(annotation))


def settings_reference() -> str:
    """Markdown reference of every stage's settings and each profile's changes (``docs/settings.md``)."""
    lines = ["# Stage settings", "",
             "Generated by `python -m prmforge.profiles > docs/settings.md` from the settings classes and",
             "`PROFILES` (`tests/test_settings.py` checks it is current). Every field can be set in the",
             "stage's Dagster run config (`ops: <asset>: config:`); an unset field takes the profile's value,",
             "and a profile only lists what it changes from the defaults below.", ""]
    for stage, cls in STAGE_SETTINGS.items():
        lines += [f"## `{stage}` ({cls.__module__}.{cls.__name__})", ""]
        if stage in STAGE_BASE:
            lines += [f"Starts from the profile's `{STAGE_BASE[stage]}` entries.", ""]
        lines += ["| field | type | default | " + " | ".join(PROFILES) + " | description |",
                  "|---|---|---|" + "---|" * len(PROFILES) + "---|"]
        for name, field in cls.model_fields.items():
            default = field.get_default(call_default_factory=True)
            default = default.model_dump() if isinstance(default, BaseModel) else default
            per_profile = [repr(PROFILES[p].get(stage, {})[name]) if name in PROFILES[p].get(stage, {}) else ""
                           for p in PROFILES]
            cells = [f"`{name}`", _type_name(field.annotation), repr(default), *per_profile, field.description or ""]
            lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", "\\n") for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(settings_reference())
