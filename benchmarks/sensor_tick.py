"""Cost of a new_dataset_sensor tick: 1000 dropped files in 10 datasets, then a quiet tick.

Prints both tick times and their ratio (the quiet tick is the baseline every
30 s costs). Run: ``.venv/bin/python benchmarks/sensor_tick.py``.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="prmforge-sensor-bench-"))
    os.environ["PRMFORGE_HOME"] = str(base / "home")
    os.environ["PRMFORGE_REGISTRY"] = str(base / "datasets.yaml")
    os.environ["PRMFORGE_INCOMING_SETTLE_S"] = "0"
    (base / "datasets.yaml").write_text("datasets: {}\n")

    import dagster as dg

    from pipelines.sensors import new_dataset_sensor
    from prmforge.storage import Storage
    from resources.storage import StorageResource

    root = (base / "storage").as_uri()
    storage = Storage(root)
    for d in range(10):
        for i in range(100):
            storage.write_bytes_atomic(storage.path("incoming", f"ds-{d}", f"f{i:03d}.jsonl"), b'{"q": 1}\n')
    resources = {"storage": StorageResource(root=root)}
    with dg.instance_for_test() as instance:
        start = time.perf_counter()
        first = new_dataset_sensor(dg.build_sensor_context(instance=instance, resources=resources))
        t_first = time.perf_counter() - start
        for req in first.dynamic_partitions_requests:
            instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        start = time.perf_counter()
        quiet = new_dataset_sensor(dg.build_sensor_context(instance=instance, cursor=first.cursor,
                                                           resources=resources))
        t_quiet = time.perf_counter() - start
    print(f"first tick: 1000 new files, 10 datasets -> {len(first.run_requests)} run requests in "
          f"{t_first * 1000:.0f} ms; quiet tick ({type(quiet).__name__}) {t_quiet * 1000:.0f} ms; "
          f"ratio {t_first / t_quiet:.1f}x; cursor {len(first.cursor) / 1000:.1f} kB")


if __name__ == "__main__":
    main()
