"""Process-wide defaults that come from the environment.

Everything user-visible is configurable through Dagster resources; these are
only the defaults those resources fall back to, so a fresh checkout runs with
no configuration at all. Secrets are read here and nowhere else, and never
returned in anything that is logged.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The project data directory (``PRMFORGE_HOME``, default ``./.prmforge``)."""
    return Path(os.environ.get("PRMFORGE_HOME", ".prmforge")).resolve()


def default_storage_root() -> str:
    """``PRMFORGE_STORAGE_ROOT`` or ``file://<home>/storage``."""
    root = os.environ.get("PRMFORGE_STORAGE_ROOT")
    if root:
        return root
    return (home() / "storage").as_uri()


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` or a sqlite database under the data directory."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    path = home() / "mlflow.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def s3_options_from_env() -> dict:
    """fsspec/s3fs options for any S3 API (AWS, MinIO, moto) from the environment.

    Endpoint: ``PRMFORGE_S3_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_S3`` or
    ``AWS_ENDPOINT_URL``. Credentials: the standard ``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY`` (else botocore's own chain). Region:
    ``AWS_REGION`` or ``AWS_DEFAULT_REGION``. This is the only place that reads
    them, so one set of variables works for datasets, models and MLflow.
    """
    opts: dict = {}
    endpoint = (
        os.environ.get("PRMFORGE_S3_ENDPOINT_URL")
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
    )
    client_kwargs: dict = {}
    if endpoint:
        opts["endpoint_url"] = endpoint
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        client_kwargs["region_name"] = region
    if client_kwargs:
        opts["client_kwargs"] = client_kwargs
    key = os.environ.get("AWS_ACCESS_KEY_ID")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        opts["key"] = key
        opts["secret"] = secret
    return opts
