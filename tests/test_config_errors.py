"""A configuration mistake fails at once with one line naming it; faults that may pass are retried."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from assets.partitions import DATASETS_PARTITIONS_NAME
from prmforge.errors import ConfigError
from prmforge.registry import RegistryError, UnknownDatasetError, get_dataset, load_registry


def _run_seed(partition: str, registry: Path, monkeypatch: pytest.MonkeyPatch):
    from pipelines.definitions import build_defs

    monkeypatch.setenv("PRMFORGE_REGISTRY", str(registry))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(DATASETS_PARTITIONS_NAME, [partition])
        result = build_defs().resolve_job_def("seed_job").execute_in_process(
            instance=instance, partition_key=partition, raise_on_error=False)
        retries = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
        failures = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    return result, retries, failures


def test_missing_source_file_fails_once_without_retries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = tmp_path / "datasets.yaml"
    registry.write_text(f"datasets:\n  lost: {{source: '{tmp_path}/nowhere.jsonl', adapter: gsm8k}}\n")
    result, retries, failures = _run_seed("lost", registry, monkeypatch)
    assert not result.success
    assert retries == []
    (failure,) = failures
    message = failure.event_specific_data.error.message
    assert "configuration error (not retried)" in message and "nowhere.jsonl' does not exist" in message


def test_config_errors_are_one_kind() -> None:
    with pytest.raises(UnknownDatasetError) as info:
        get_dataset("no-such-dataset")
    assert isinstance(info.value, ConfigError) and isinstance(info.value, KeyError)
    assert str(info.value).startswith("dataset 'no-such-dataset' is not in the registry")
    assert issubclass(RegistryError, ConfigError)


def test_invalid_registry_yaml_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "datasets.yaml"
    bad.write_text("datasets: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_registry(bad)
