"""MLflow tracking and registry resource (MLflow 3; ``dagster-mlflow`` is legacy).

Defaults: a sqlite tracking store under the data directory and artifacts under
the storage root (``<root>/mlflow``), so models live beside the datasets they
were trained on. Any tracking server URL can be configured instead.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

from dagster import ConfigurableResource
from pydantic import Field

from prmforge.env import default_storage_root, default_tracking_uri

# A key names a secret when its last word does (``api_key``, ``hf_token``,
# ``aws_secret_access_key``, ``password``); ``max_tokens`` or
# ``step_token_init`` are settings and stay readable.
_SECRET_KEY = re.compile(
    r"(^|[_.\-])(secret|password|passwd|token|api[_-]?key|access[_-]?key|secret[_-]?key|credentials?)$", re.I
)


def _same_location(recorded: str, wanted: str) -> bool:
    """Whether two artifact locations name the same place (``file:`` forms and trailing slashes differ)."""
    def norm(uri: str) -> str:
        parsed = urlparse(uri)
        path = parsed.path if parsed.scheme in ("", "file") else f"{parsed.netloc}{parsed.path}"
        return f"{parsed.scheme if parsed.scheme not in ('', 'file') else 'file'}:{path.rstrip('/')}"

    return norm(recorded) == norm(wanted)


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
    ui_url: str = Field(default="http://127.0.0.1:5000",
                        description="where `mlflow ui` serves this tracking store; assets link their runs there")

    def run_url(self, run_id: str) -> str:
        """Link to a run in the MLflow UI (shown as asset metadata)."""
        run = self.client().get_run(run_id)
        return f"{self.ui_url.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}"

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
        location = f"{self.artifact_root.rstrip('/')}/{name}"
        exp = client.get_experiment_by_name(name)
        if exp is not None and _same_location(exp.artifact_location, location):
            return exp.experiment_id
        if exp is not None:
            # MLflow fixes an experiment's artifact location at creation. The data home
            # moved (or the artifact root changed): keep the old runs as history under a
            # new name and start the experiment again where artifacts now belong.
            client.rename_experiment(exp.experiment_id, f"{name} (before {time.strftime('%Y-%m-%d %H:%M:%S')})")
        return client.create_experiment(name, artifact_location=location)

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
