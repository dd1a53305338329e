"""A pool of Ray actors that computes shards: one engine per actor (per GPU).

:class:`RayExecutor` ships the shard ``work`` function to ``num_actors``
actors once (each builds its engine lazily on its first shard and keeps it),
hands out shards as actors free up and yields finished tables to
:func:`prmforge.sharding.run_sharded`, which writes each one atomically as it
arrives. An actor that dies (killed, OOM, lost node) loses only the shard it
was computing: the shard goes back to the queue and a fresh actor replaces the
dead one, at most ``max_actor_restarts`` times per run. An exception raised by
the work itself is a deterministic error and fails the run at once, as it does
in-process (the Dagster step's retry policy decides what to do with it).
Shard seeds derive from the shard index, so which actor computes a shard never
changes its rows.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from prmforge import env
from prmforge.sharding import ShardExecutor, ShardWork


def import_ray() -> Any:
    """``ray``, or a one-line error naming the extra that provides it."""
    try:
        import ray
    except ImportError as exc:  # the optional extra is missing
        raise RuntimeError("the Ray executor needs ray: pip install 'prmforge[ray]'") from exc
    return ray


@dataclass(frozen=True)
class RayConnection:
    """Where the Ray runtime is and, for a local one, how small to make it.

    ``address``: ``local`` starts (or reuses) a runtime in this process bound to
    127.0.0.1 only (see :func:`prmforge.env.ray_loopback_only`) with no dashboard; ``auto`` joins the cluster this node belongs to;
    ``ray://host:10001`` connects through the Ray client (KubeRay head service).
    """

    address: str = "local"
    num_cpus: int | None = None
    num_gpus: int | None = None
    object_store_mb: int = 256
    namespace: str = "prmforge"
    runtime_env: dict[str, Any] = field(default_factory=dict)

    def ensure(self) -> Any:
        """Connect (once per process) and return the ``ray`` module."""
        if self.address == "local" and "ray" not in sys.modules:
            env.ray_loopback_only()
        ray = import_ray()
        if ray.is_initialized():
            return ray
        common: dict[str, Any] = {"namespace": self.namespace, "log_to_driver": False,
                                  "runtime_env": self.runtime_env or None}
        if self.address == "local":
            ray.init(num_cpus=self.num_cpus, num_gpus=self.num_gpus, include_dashboard=False,
                     _node_ip_address="127.0.0.1", object_store_memory=self.object_store_mb * 1024 * 1024,
                     **common)
        else:
            ray.init(address=self.address, **common)
        return ray


class _ShardActor:
    """Holds one copy of the work function (and so one engine) for the life of the pool."""

    def __init__(self, work: ShardWork) -> None:
        self.work = work

    def run(self, chunk: list[Any], index: int) -> pa.Table:
        return self.work(chunk, index)


@dataclass
class RayExecutor(ShardExecutor):
    """Shards over ``num_actors`` Ray actors, each reserving ``num_gpus``/``num_cpus``."""

    connection: RayConnection = field(default_factory=RayConnection)
    num_actors: int = 2
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_actor_restarts: int = 3
    resource_wait_s: float = 600.0  # an autoscaling cluster may need minutes to add GPU nodes
    deaths: int = field(default=0, init=False)  # actors lost during the last map (metadata, tests)

    def describe(self) -> dict[str, Any]:
        return {"executor": "ray", "ray_address": self.connection.address, "ray_actors": self.num_actors,
                "ray_gpus_per_actor": self.num_gpus, "ray_actor_deaths": self.deaths}

    def map(self, work: ShardWork, shards: Sequence[tuple[int, list[Any]]]) -> Iterator[tuple[int, pa.Table]]:
        if not shards:
            return
        ray = self.connection.ensure()
        self._wait_for_resources(ray)
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        lost = (ActorDiedError, ActorUnavailableError, RayActorError)
        actor_cls = ray.remote(_ShardActor).options(num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                                                    max_restarts=0, max_task_retries=0)
        work_ref = ray.put(work)  # pickled once, shared by every actor
        self.deaths = 0
        queue = deque(shards)
        idle = [actor_cls.remote(work_ref) for _ in range(min(self.num_actors, len(shards)))]
        pool = list(idle)
        running: dict[Any, tuple[Any, tuple[int, list[Any]]]] = {}
        try:
            while queue or running:
                while queue and idle:
                    actor, shard = idle.pop(), queue.popleft()
                    running[actor.run.remote(shard[1], shard[0])] = (actor, shard)
                ready, _ = ray.wait(list(running), num_returns=1)
                actor, shard = running.pop(ready[0])
                try:
                    table = ray.get(ready[0])
                except lost as exc:
                    self.deaths += 1
                    if self.deaths > self.max_actor_restarts:
                        raise RuntimeError(f"{self.deaths} Ray actors died (max_actor_restarts="
                                           f"{self.max_actor_restarts}); last: {exc}") from exc
                    queue.appendleft(shard)  # the only work lost is this shard: compute it again
                    pool.remove(actor)
                    ray.kill(actor)  # an unavailable (not yet dead) actor must not hold its GPU
                    fresh = actor_cls.remote(work_ref)
                    pool.append(fresh)
                    idle.append(fresh)
                    continue
                except ray.exceptions.RayTaskError as exc:
                    raise exc.as_instanceof_cause() from None
                idle.append(actor)
                yield shard[0], table
        finally:
            for actor in pool:
                ray.kill(actor)

    def _wait_for_resources(self, ray: Any) -> None:
        """Wait until the cluster can hold the pool: a clear error instead of actors pending forever."""
        need_cpu, need_gpu = self.num_cpus * self.num_actors, self.num_gpus * self.num_actors
        deadline = time.monotonic() + self.resource_wait_s
        while True:
            total = ray.cluster_resources()
            if total.get("CPU", 0) >= need_cpu and total.get("GPU", 0) >= need_gpu:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Ray cluster has {total.get('CPU', 0):g} CPUs / {total.get('GPU', 0):g} GPUs; "
                                   f"{self.num_actors} actors need {need_cpu:g} / {need_gpu:g}")
            time.sleep(2.0)
