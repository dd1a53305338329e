"""Stage settings: one documented class per stage, profiles validated, run config in parity with settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from prmforge.config import StageSettings
from prmforge.profiles import PROFILES, STAGE_BASE, STAGE_SETTINGS, settings_reference, stage_settings

REPO = Path(__file__).resolve().parents[1]


def _models(cls: type[BaseModel]) -> list[type[BaseModel]]:
    """``cls`` and the settings models nested in its fields (``BenchmarkSpec``)."""
    out = [cls]
    for f in cls.model_fields.values():
        for arg in (f.annotation, *getattr(f.annotation, "__args__", ())):
            if isinstance(arg, type) and issubclass(arg, BaseModel) and arg not in out:
                out += _models(arg)
    return out


@pytest.mark.parametrize("stage", list(STAGE_SETTINGS))
def test_every_field_is_documented_and_unknown_keys_fail(stage: str) -> None:
    cls = STAGE_SETTINGS[stage]
    assert issubclass(cls, StageSettings)
    for model in _models(cls):
        assert model.model_config.get("extra") == "forbid", model
        undocumented = [n for n, f in model.model_fields.items() if not (f.description or "").strip()]
        assert not undocumented, f"{model.__name__}: fields without a description: {undocumented}"
    with pytest.raises(ValidationError, match="extra"):
        cls(no_such_field=1)


def test_profiles_are_keyed_by_stage_and_every_profile_builds_every_stage() -> None:
    for profile, stages in PROFILES.items():
        assert set(stages) <= set(STAGE_SETTINGS), f"{profile}: unknown stages {set(stages) - set(STAGE_SETTINGS)}"
        for stage in STAGE_SETTINGS:
            assert isinstance(stage_settings(stage, profile), STAGE_SETTINGS[stage])


def test_a_typo_in_a_profile_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PROFILES["tiny"], "mc_step_labels", {"kk": 3})
    with pytest.raises(ValidationError, match="kk"):
        stage_settings("mc_step_labels", "tiny")
    with pytest.raises(ValueError, match="unknown stage"):
        stage_settings("rollouts", "tiny")


def test_layering_defaults_profile_base_stage_and_overrides() -> None:
    s = stage_settings("prm_base_model", "tiny", seed=7)
    assert s.hidden_size == PROFILES["tiny"]["policy_model"]["hidden_size"]  # from its base stage
    assert s.seed == 7
    assert STAGE_BASE["prm_base_model"] == "policy_model"
    world = stage_settings("prm_base_model", "world")
    assert world.train_steps == PROFILES["world"]["prm_base_model"]["train_steps"]
    assert stage_settings("policy_rollouts", "tiny", n=None).n == PROFILES["tiny"]["policy_rollouts"]["n"]


def test_every_setting_is_in_its_assets_run_config() -> None:
    """The Launchpad can set every field of a stage (and the run config holds nothing unknown)."""
    from pipelines.definitions import defs
    from resources.settings import SettingsResource

    graph = defs.resolve_asset_graph()
    for stage, cls in STAGE_SETTINGS.items():
        op = graph.get(_key(stage)).assets_def.op
        fields = set(op.config_schema.config_type.fields)
        missing = set(cls.model_fields) - fields
        assert not missing, f"{stage}: settings not in run config: {missing}"
        run_only = fields - set(cls.model_fields)
        assert run_only <= {"force_retrain", "min_per_class"}, f"{stage}: unexpected run-config fields {run_only}"
    # run config reaches the settings; None keeps the profile's value
    config_cls = graph.get(_key("mc_step_labels")).assets_def.op.config_schema  # built from the class
    assert config_cls is not None
    from resources.settings import stage_config

    cfg = stage_config("mc_step_labels")(k=5)
    s = SettingsResource(profile="tiny").stage("mc_step_labels", cfg)
    assert s.k == 5 and s.shard_size == PROFILES["tiny"]["mc_step_labels"]["shard_size"]


def _key(stage: str):
    from dagster import AssetKey

    return AssetKey(stage)


def test_settings_reference_is_current() -> None:
    """``docs/settings.md`` is ``python -m prmforge.profiles`` output."""
    assert (REPO / "docs" / "settings.md").read_text(encoding="utf-8") == settings_reference(), (
        "regenerate: python -m prmforge.profiles > docs/settings.md")


def test_engine_and_judge_resources_offer_every_engine_config_field() -> None:
    """Both engine resources are generated from ``EngineConfig``: same fields, defaults and descriptions."""
    from prmforge.engines.factory import EngineConfig
    from resources.engine import EngineResource
    from resources.judge import JudgeResource

    assert EngineConfig.model_config.get("extra") == "forbid"
    undocumented = [n for n, f in EngineConfig.model_fields.items() if not (f.description or "").strip()]
    assert not undocumented, f"EngineConfig: fields without a description: {undocumented}"
    with pytest.raises(ValidationError, match="extra"):
        EngineConfig(no_such_field=1)
    # What each resource deliberately says differently (its own default or meaning of the field).
    own = {EngineResource: {"model"}, JudgeResource: {"model", "batch_size", "timeout_s"}}
    for resource, overridden in own.items():
        for name, f in EngineConfig.model_fields.items():
            assert name in resource.model_fields, (resource.__name__, name)
            if name not in overridden:
                assert resource.model_fields[name].get_default() == f.get_default(), (resource.__name__, name)
                assert resource.model_fields[name].description == f.description, (resource.__name__, name)
    assert all((f.description or "").strip() for f in JudgeResource.model_fields.values())
    cfg = EngineResource(backend="openai", model="m", max_retries=1).config()
    assert (cfg.backend, cfg.model, cfg.max_retries) == ("openai", "m", 1)
    judge = JudgeResource(kind="llm", backend="vllm", model="j", max_model_len=512).config()
    assert (judge.kind, judge.engine.backend, judge.engine.max_model_len, judge.engine.timeout_s) == (
        "llm", "vllm", 512, 120.0)
