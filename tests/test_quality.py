"""The quality resource: a contract's result → blocking ERROR AssetCheckResult with offending values."""


import pyarrow as pa
from dagster import (
    AssetCheckSeverity,
    AssetExecutionContext,
    DagsterInstance,
    asset,
    asset_check,
    materialize,
)

from assets.partitions import dataset_partitions
from prmforge.contracts import Contract, gxe
from resources.quality import QualityResource

BAD = pa.table({
    "problem_id": ["a", "b", "b", None],
    "problem": ["p1", "", "p3", "p4"],
    "split": ["train", "train", "holdout", "test"],
})


def _expectations() -> list:
    e = gxe()
    return [
        e.ExpectColumnValuesToNotBeNull(column="problem_id"),
        e.ExpectColumnValuesToBeUnique(column="problem_id"),
        e.ExpectColumnValueLengthsToBeBetween(column="problem", min_value=1),
        e.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "validation", "test"]),
    ]


def contract(name: str) -> Contract:
    return Contract(name, "demo", _expectations, describe=("problem_id present and unique",))


def test_failed_expectations_are_named_with_sample_values() -> None:
    result = QualityResource().check(contract("demo_suite"), BAD)
    assert result.passed is False
    assert result.severity == AssetCheckSeverity.ERROR
    assert result.check_name == "demo_suite"
    meta = {k: v.value for k, v in result.metadata.items()}
    assert meta["failed_expectations"] == 4 and meta["rows"] == 4
    unique = meta["failed_1_expect_column_values_to_be_unique_problem_id"]
    assert unique["unexpected_count"] == 2 and unique["sample_unexpected"] == ["b", "b"]
    in_set = meta["failed_3_expect_column_values_to_be_in_set_split"]
    assert in_set["sample_unexpected"] == ["holdout"] and in_set["kwargs"]["value_set"] == ["train", "validation",
                                                                                             "test"]
    assert meta["failed_2_expect_column_value_lengths_to_be_between_problem"]["sample_unexpected"] == [""]
    assert "expect_column_values_to_not_be_null(problem_id)" in meta["failed"]
    assert "problem_id present and unique" in meta["contract"]


def test_clean_table_passes() -> None:
    good = pa.table({"problem_id": ["a", "b"], "problem": ["x", "y"], "split": ["train", "test"]})
    assert QualityResource().check(contract("ok"), good).passed is True


def test_blocking_partitioned_check_stops_downstream() -> None:
    @asset(partitions_def=dataset_partitions)
    def upstream_table() -> None:
        return None

    @asset_check(asset=upstream_table, blocking=True, partitions_def=dataset_partitions)
    def upstream_quality(quality: QualityResource):
        return quality.check(contract("upstream_quality"), BAD)

    ran: list[str] = []

    @asset(partitions_def=dataset_partitions, deps=[upstream_table])
    def downstream(context: AssetExecutionContext) -> None:
        ran.append(context.partition_key)

    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("datasets", ["d1"])
        result = materialize([upstream_table, upstream_quality, downstream], partition_key="d1", instance=instance,
                             resources={"quality": QualityResource()}, raise_on_error=False)
    (ev,) = result.get_asset_check_evaluations()
    assert ev.passed is False and ev.severity == AssetCheckSeverity.ERROR
    assert ran == []  # the gate held
    assert not result.success
