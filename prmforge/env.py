"""The process environment: the only module that reads or sets environment variables.

Everything user-visible is configured through stage settings (``prmforge.profiles``)
and Dagster resources; the variables here are only process-wide defaults, so a
fresh checkout runs with no configuration at all, plus secrets and the
launcher's variables (``torchrun``). Keeping every read in one module makes the
list below complete, and ``tests/test_architecture.py`` checks that no other
module touches ``os.environ``. Secrets are read here and never returned in
anything that is logged.

=================================  ==================================================
``PRMFORGE_HOME``                  data directory (default ``./.prmforge``)
``PRMFORGE_STORAGE_ROOT``          storage root URL (default ``file://<home>/storage``)
``PRMFORGE_PROFILE``               run profile (default ``demo``)
``PRMFORGE_REGISTRY``              ``datasets.yaml`` to read (default: the repo's)
``PRMFORGE_POLICY_CACHE``          cache folder of trained bootstrap policies (off)
``PRMFORGE_MODEL_CACHE``           local copies of remote models (``<home>/cache/models``)
``PRMFORGE_GPU_POOL_LIMIT``        slots of the ``gpu`` concurrency pool (1)
``PRMFORGE_MAX_RETRIES``           retries of remote steps (3; 0 disables)
``PRMFORGE_RETRY_DELAY_S``         first retry delay in seconds (5, then doubling)
``PRMFORGE_INCOMING_SETTLE_S``     minimum age of a dropped file before pickup (2)
``PRMFORGE_REFRESH_CRON``          refresh schedule of mutable sources (``0 3 * * *``)
``PRMFORGE_EXECUTOR``              ``k8s``: one pod per step
``PRMFORGE_RAY_ADDRESS``           Ray cluster of the sharded stages (off; ``local``, ``auto``, ``ray://h:10001``)
``PRMFORGE_RAY_ACTORS``            engine actors per sharded step on Ray (2)
``PRMFORGE_RAY_GPUS_PER_ACTOR``    GPUs each Ray actor reserves (0; 1 on a GPU cluster)
``PRMFORGE_TRAIN_GPUS``            GPUs the ``prm_model`` step pod requests on Kubernetes (1)
``RAY_ENABLE_WINDOWS_OR_OSX_...``  set to 0 before a local Ray starts: it then binds 127.0.0.1 only
``RAY_AUTH_TOKEN``                 secret token of a Ray cluster with token authentication
``PRMFORGE_S3_ENDPOINT_URL``       S3 endpoint (also ``AWS_ENDPOINT_URL_S3``/``_URL``)
``AWS_*``                          credentials and region for any S3 API
``MLFLOW_TRACKING_URI``            tracking server (default: sqlite under home)
``DAGSTER_HOME``                   Dagster instance folder (CLI default ``<home>/dagster_home``)
``WORLD_SIZE``, ``LOCAL_RANK``     set by ``torchrun`` for multi-GPU PRM training
=================================  ==================================================
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_PROFILE = "demo"
DEFAULT_REFRESH_CRON = "0 3 * * *"
POLICY_CACHE_VAR = "PRMFORGE_POLICY_CACHE"
REGISTRY_VAR = "PRMFORGE_REGISTRY"


def get(name: str, default: str | None = None) -> str | None:
    """The raw value of ``name`` (``default`` when unset)."""
    return os.environ.get(name, default)


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
    ``AWS_REGION`` or ``AWS_DEFAULT_REGION``. One set of variables works for
    datasets, models and MLflow.
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


def profile_name() -> str:
    """``PRMFORGE_PROFILE`` or ``demo`` (validated by ``prmforge.profiles.active_profile``)."""
    return os.environ.get("PRMFORGE_PROFILE", DEFAULT_PROFILE)


def set_profile(profile: str) -> None:
    """Make ``profile`` the process's default (the CLI's ``--profile``; resources read it at load)."""
    os.environ["PRMFORGE_PROFILE"] = profile


def registry_path() -> Path | None:
    """``PRMFORGE_REGISTRY`` if set."""
    value = os.environ.get(REGISTRY_VAR)
    return Path(value) if value else None


def policy_cache_dir() -> Path | None:
    """The policy cache from ``PRMFORGE_POLICY_CACHE``, or None when unset (no caching)."""
    value = os.environ.get(POLICY_CACHE_VAR, "").strip()
    return Path(value).expanduser().resolve() if value else None


def model_cache_dir() -> Path:
    """``PRMFORGE_MODEL_CACHE`` or ``<home>/cache/models``."""
    return Path(os.environ.get("PRMFORGE_MODEL_CACHE") or home() / "cache" / "models")


def secret(name: str | None) -> str | None:
    """The value of the secret variable ``name`` (e.g. an API key); None when unnamed or unset."""
    return os.environ.get(name) if name else None


def _int(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name, str(default))
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def gpu_pool_limit() -> int:
    """Slots of the ``gpu`` pool: ``PRMFORGE_GPU_POOL_LIMIT`` or 1 (one GPU)."""
    return _int("PRMFORGE_GPU_POOL_LIMIT", 1, 1)


def gpu_pool_limit_set() -> bool:
    """Whether ``PRMFORGE_GPU_POOL_LIMIT`` is set (the CLI then applies it to the instance)."""
    return bool(os.environ.get("PRMFORGE_GPU_POOL_LIMIT"))


def ray_address() -> str:
    """``PRMFORGE_RAY_ADDRESS``: '' (default) keeps shards in the step process."""
    return os.environ.get("PRMFORGE_RAY_ADDRESS", "").strip()


def ray_actors() -> int:
    """``PRMFORGE_RAY_ACTORS`` (default 2): engine actors per sharded step."""
    return _int("PRMFORGE_RAY_ACTORS", 2, 1)


def ray_gpus_per_actor() -> float:
    """``PRMFORGE_RAY_GPUS_PER_ACTOR`` (default 0): GPUs each actor reserves."""
    return float(os.environ.get("PRMFORGE_RAY_GPUS_PER_ACTOR", "0"))


def train_gpus() -> int:
    """``PRMFORGE_TRAIN_GPUS`` (default 1): GPUs of the ``prm_model`` step pod (its ``num_workers``)."""
    return _int("PRMFORGE_TRAIN_GPUS", 1, 1)


def ray_loopback_only() -> None:
    """Make a Ray runtime started by this process advertise and bind 127.0.0.1 only.

    Ray otherwise swaps a 127.0.0.1 node address for the machine's network
    address and listens there; this variable (read when ``ray`` is imported)
    keeps a local runtime on loopback. It must be set before ``import ray``.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


def max_retries() -> int:
    """``PRMFORGE_MAX_RETRIES`` (default 3; 0 disables retries)."""
    return int(os.environ.get("PRMFORGE_MAX_RETRIES", "3"))


def retry_delay_s() -> float:
    """``PRMFORGE_RETRY_DELAY_S`` (default 5 seconds; doubles per retry)."""
    return float(os.environ.get("PRMFORGE_RETRY_DELAY_S", "5"))


def incoming_settle_s() -> float:
    """``PRMFORGE_INCOMING_SETTLE_S``: minimum age of a dropped file before pickup (default 2)."""
    return float(os.environ.get("PRMFORGE_INCOMING_SETTLE_S", "2"))


def refresh_cron() -> str:
    """``PRMFORGE_REFRESH_CRON`` or daily at 03:00."""
    return os.environ.get("PRMFORGE_REFRESH_CRON", DEFAULT_REFRESH_CRON).strip() or DEFAULT_REFRESH_CRON


def executor() -> str:
    """``PRMFORGE_EXECUTOR`` lower-cased (``k8s`` or empty)."""
    return os.environ.get("PRMFORGE_EXECUTOR", "").lower()


def dagster_home(default: Path) -> Path:
    """``DAGSTER_HOME`` or ``default``."""
    return Path(os.environ.get("DAGSTER_HOME") or default)


def set_dagster_home(path: Path) -> None:
    """Point Dagster at ``path`` for this process and its children."""
    os.environ["DAGSTER_HOME"] = str(path)


def export(name: str, value: str) -> None:
    """Set ``name`` for this process and its children (settings a library reads from the environment,
    e.g. vLLM's CPU platform)."""
    os.environ[name] = value


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment plus ``extra``, for a subprocess."""
    return dict(os.environ, **extra)


def force_hub_offline() -> None:
    """Dataset-hub libraries read only their local cache (no network waits)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"


def quiet_progress_bars() -> None:
    """No tqdm bars from libraries (hub downloads, model loading, MLflow artifacts) in run and daemon logs.

    A bar redrawn into a log file is hundreds of lines of noise; stages report
    progress as log lines with rate and ETA instead (``prmforge.progress``).
    Set before those libraries are imported; a value the user set is kept.
    """
    for name, value in (("TQDM_DISABLE", "1"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                        ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"), ("TRANSFORMERS_VERBOSITY", "error")):
        os.environ.setdefault(name, value)


def disable_gx_analytics() -> None:
    """Great Expectations sends no analytics (unless the user set the variable)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


def world_size() -> int:
    """``WORLD_SIZE`` set by ``torchrun`` (1 outside it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """``LOCAL_RANK`` set by ``torchrun`` (0 outside it)."""
    return int(os.environ.get("LOCAL_RANK", "0"))
