"""Partitions shared by every per-dataset stage."""

from dagster import DynamicPartitionsDefinition

DATASETS_PARTITIONS_NAME = "datasets"
dataset_partitions = DynamicPartitionsDefinition(name=DATASETS_PARTITIONS_NAME)
