"""One ConfigurableResource per external system; ``build_resources`` wires the defaults."""

from __future__ import annotations

from typing import Any


def build_resources(**overrides: Any) -> dict[str, Any]:
    """The default resource set of the code location, with optional overrides.

    Tests pass e.g. ``storage=StorageResource(root=...)``; resources that
    depend on storage (the IO manager) are rebuilt around the override.
    """
    from prmforge import env
    from resources.engine import EngineResource
    from resources.judge import JudgeResource
    from resources.mlflow import MLflowResource
    from resources.quality import QualityResource
    from resources.ray import RayResource
    from resources.settings import SettingsResource
    from resources.storage import ParquetIOManager, StorageResource

    storage = overrides.pop("storage", None) or StorageResource()
    res: dict[str, Any] = {
        "storage": storage,
        "io_manager": ParquetIOManager(storage=storage),
        "settings": SettingsResource(),
        # MLflow artifacts live under the same storage root as the datasets.
        "mlflow": MLflowResource(artifact_root=storage.root.rstrip("/") + "/mlflow"),
        "quality": QualityResource(),
        "policy_engine": EngineResource(),
        "judge": JudgeResource(),
        # PRMFORGE_RAY_* point the sharded stages at a Ray cluster (unset: in-process, no Ray)
        "ray_cluster": RayResource(address=env.ray_address(), num_actors=env.ray_actors(),
                                   num_gpus_per_actor=env.ray_gpus_per_actor()),
    }
    res.update(overrides)
    return res
