"""MLflow tracking and registry resource (MLflow 3; ``dagster-mlflow`` is legacy).

Defaults: a sqlite tracking store under the data directory and artifacts under
the storage root (``<root>/mlflow``), so models live beside the datasets they
were trained on. Any tracking server URL can be configured instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dagster import ConfigurableResource
from pydantic import Field

from prmforge.env import default_storage_root, default_tracking_uri

# A key names a secret when its last word does (``api_key``, ``hf_token``,
# ``aws_secret_access_key``, ``password``); ``max_tokens`` or
# ``step_token_init`` are settings and stay readable.
_SECRET_KEY = re.compile(
    r"(^|[_.\-])(secret|password|passwd|token|api[_-]?key|access[_-]?key|secret[_-]?key|credentials?)$", re.I
)


def redact(params: dict[str, Any]) -> dict[str, Any]:
    """Mask values whose key names a secret, so they never reach MLflow."""
    return {k: ("***" if _SECRET_KEY.search(str(k)) else v) for k, v in params.items()}


class MLflowResource(ConfigurableResource):
    """Where runs, metrics and registered models go."""

    tracking_uri: str = Field(default_factory=default_tracking_uri)
    artifact_root: str = Field(
        default_factory=lambda: default_storage_root().rstrip("/") + "/mlflow",
        description="artifact location of experiments created by prmforge",
    )
    experiment: str = "prmforge"

    def _activate(self) -> None:
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)

    def client(self):  # -> mlflow.MlflowClient
        """A client bound to this resource's tracking (and registry) URI."""
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def experiment_id(self, name: str | None = None) -> str:
        client = self.client()
        name = name or self.experiment
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        return client.create_experiment(name, artifact_location=f"{self.artifact_root.rstrip('/')}/{name}")

    @contextmanager
    def start_run(self, run_name: str, tags: dict[str, str] | None = None,
                  experiment: str | None = None) -> Iterator[Any]:
        """Start an MLflow run (fluent API) in this resource's experiment."""
        import mlflow

        self._activate()
        exp_id = self.experiment_id(experiment)
        with mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=tags or {}) as run:
            yield run

    def log_params(self, params: dict[str, Any]) -> None:
        import mlflow

        mlflow.log_params({k: str(v)[:500] for k, v in redact(params).items()})
