"""``ray_cluster``: where sharded generation and labelling run (this process, or a Ray actor pool).

Empty ``address`` (the default) keeps every shard in the step's own process, as
before Ray existed; ``ray`` is then never imported. With an address, the
sharded assets (``policy_rollouts``, ``mc_step_labels``, LLM
``judge_step_labels``) hand their shards to ``num_actors`` Ray actors, each
reserving ``num_gpus_per_actor`` GPUs and holding one engine; see
``prmforge.distributed.ray_pool`` and docs/orchestration.md.
"""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

from prmforge.sharding import LocalExecutor, ShardExecutor


class RayResource(ConfigurableResource):
    """Connection to a Ray cluster and the shape of the actor pool."""

    address: str = Field("", description="'' = no Ray (shards run in the step process); 'local' = a Ray runtime "
                         "started in the step process on 127.0.0.1; 'auto' = the cluster this node belongs to; "
                         "'ray://<head>:10001' = a remote cluster (KubeRay head service)")
    num_actors: int = Field(2, gt=0, description="engine actors per sharded step (one per GPU on a GPU cluster)")
    num_cpus_per_actor: float = Field(1.0, ge=0, description="CPUs each actor reserves")
    num_gpus_per_actor: float = Field(0.0, ge=0, description="GPUs each actor reserves (1 on a GPU cluster)")
    max_actor_restarts: int = Field(3, ge=0, description="dead actors replaced per step before it fails "
                                    "(each death loses only its shard in flight)")
    resource_wait_s: float = Field(600.0, gt=0, description="how long to wait for the cluster to have room for "
                                   "the pool (an autoscaler may be adding GPU nodes)")
    local_num_cpus: int | None = Field(None, description="address='local' only: CPUs of the local runtime")
    local_object_store_mb: int = Field(256, gt=0, description="address='local' only: object store size")

    def executor(self) -> ShardExecutor:
        """The executor the sharded assets pass to ``run_sharded``."""
        if not self.address:
            return LocalExecutor()
        from prmforge.distributed.ray_pool import RayConnection, RayExecutor

        connection = RayConnection(address=self.address, num_cpus=self.local_num_cpus,
                                   object_store_mb=self.local_object_store_mb)
        return RayExecutor(connection=connection, num_actors=self.num_actors, num_cpus=self.num_cpus_per_actor,
                           num_gpus=self.num_gpus_per_actor, max_actor_restarts=self.max_actor_restarts,
                           resource_wait_s=self.resource_wait_s)
