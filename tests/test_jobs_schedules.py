"""Jobs (whole graph and per stage) and the source-refresh schedule."""

from __future__ import annotations

import datetime as dt
import importlib
from pathlib import Path

import dagster as dg
import pytest

from assets.partitions import DATASETS_PARTITIONS_NAME
from pipelines.automation import STAGE_GROUPS


def test_one_job_for_the_graph_and_one_per_stage() -> None:
    """Stage jobs select their asset group; the full job selects every stage group."""
    from pipelines.definitions import defs

    graph = defs.resolve_asset_graph()
    by_group: dict[str, set[str]] = {}
    for k in graph.get_all_asset_keys():
        if graph.get(k).is_executable:
            by_group.setdefault(graph.get(k).group_name, set()).add(k.path[-1])
    assert set(by_group) == set(STAGE_GROUPS)
    names = {j.name for j in defs.jobs}
    assert names == {"full_pipeline", *(f"{s}_job" for s in STAGE_GROUPS)}
    full = {k.path[-1] for k in defs.resolve_job_def("full_pipeline").asset_layer.executable_asset_keys}
    assert full == set().union(*by_group.values())
    for stage in STAGE_GROUPS:
        job = defs.resolve_job_def(f"{stage}_job")
        assert {k.path[-1] for k in job.asset_layer.executable_asset_keys} == by_group[stage], stage
    assert by_group["seed"] == {"seed_problems", "seed_problems_quarantine", "seed_problems_dropped"}
    assert defs.resolve_job_def("seed_job").partitions_def.name == DATASETS_PARTITIONS_NAME


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "drops"
    folder.mkdir()
    single = tmp_path / "one.jsonl"
    single.write_text("{}\n")
    path = tmp_path / "datasets.yaml"
    path.write_text(
        "datasets:\n"
        "  hub-ds: {source: 'hub:openai/gsm8k'}\n"
        "  s3-ds: {source: 's3://bucket/prefix/'}\n"
        f"  folder-ds: {{source: '{folder}'}}\n"
        f"  file-ds: {{source: '{single}'}}\n"
        "  world-ds: {source: world, adapter: world}\n"
        "  unregistered-hub: {source: 'hub:x/y'}\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("PRMFORGE_REGISTRY", str(path))
    return path


def test_refresh_schedule_reingests_changeable_sources(registry: Path) -> None:
    from pipelines.schedules import mutable_source_keys, refresh_sources_schedule

    assert mutable_source_keys() == ["folder-ds", "hub-ds", "s3-ds", "unregistered-hub"]
    when = dt.datetime(2026, 1, 2, 3, 0, tzinfo=dt.UTC)
    with dg.instance_for_test() as instance:
        # As context managers: the context then releases the instance it made current when it ends.
        with dg.build_schedule_context(instance=instance, scheduled_execution_time=when) as ctx:
            assert isinstance(refresh_sources_schedule(ctx), dg.SkipReason)  # nothing registered yet

        instance.add_dynamic_partitions(DATASETS_PARTITIONS_NAME, ["hub-ds", "s3-ds", "folder-ds", "file-ds",
                                                                   "world-ds"])
        with dg.build_schedule_context(instance=instance, scheduled_execution_time=when) as ctx:
            reqs = list(refresh_sources_schedule(ctx))
        assert sorted(r.partition_key for r in reqs) == ["folder-ds", "hub-ds", "s3-ds"]
        assert all(r.run_key.endswith("20260102T0300") for r in reqs)  # one request per dataset per tick
        assert refresh_sources_schedule.job_name == "seed_job"


def test_refresh_cron_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    import pipelines.schedules as schedules

    assert schedules.refresh_cron() == "0 3 * * *"
    monkeypatch.setenv("PRMFORGE_REFRESH_CRON", "*/15 * * * *")
    reloaded = importlib.reload(schedules)
    try:
        assert reloaded.refresh_sources_schedule.cron_schedule == "*/15 * * * *"
    finally:
        monkeypatch.delenv("PRMFORGE_REFRESH_CRON")
        importlib.reload(schedules)
