"""The Ray backend's settings; the RL method's settings stay in :class:`~..rl.RLConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["RayConfig"]


@dataclass
class RayConfig:
    """Where and how the RL loop runs on a Ray cluster (``RLConfig.backend = "ray"``)."""

    address: str | None = None
    """Cluster to join ("auto", "ray://host:10001"); None: join a running one if any, else start a local one."""
    num_cpus: int | None = None
    """Logical CPUs of a local cluster started here (None: Ray's count)."""
    rollout_workers: int = 2
    """Rollout actors; each holds one policy engine and its envs (its own, or slots on env workers)."""
    rollout_backend: Literal["hf", "vllm"] = "hf"
    """hf: transformers generate (multimodal on CPU); vllm: a vLLM engine (text models on CPU)."""
    worker_concurrency: int | None = None
    """Episodes running at once per rollout worker (None: RLConfig.concurrency / rollout_workers)."""
    cpus_per_rollout_worker: float = 1.0
    """Logical CPUs reserved per rollout actor (sandboxes run inside it)."""
    gpus_per_rollout_worker: float = 0.0
    """GPUs per rollout actor (0 on CPU; 1 for a separated layout; a fraction to colocate)."""
    env_workers: int = 0
    """Env-worker actors hosting the envs and their sandboxes (0: the envs live inside the rollout
    actors). Each is placed in its rollout worker's placement-group bundle (the same node)."""
    cpus_per_env_worker: float = 1.0
    """Logical CPUs reserved per env-worker actor (its code sandboxes run there)."""
    envs_per_env_worker: int | None = None
    """Env slots per env worker (None: as many as the rollout concurrency it serves needs; fewer
    lowers the episodes a rollout worker runs at once)."""
    vllm_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra vLLM EngineArgs (tensor_parallel_size, gpu_memory_utilization, max_model_len ...)."""
    learners: int = 2
    """Data-parallel learner ranks (one Ray actor each, one torch.distributed group)."""
    learner_strategy: Literal["deepspeed", "fsdp2"] = "deepspeed"
    """Sharding engine of the learner group: DeepSpeed ZeRO (zero_stage), or torch FSDP2
    (fully_shard per decoder layer and vision block, then the root; torch AdamW)."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage: 2 (optimizer state + gradients sharded) or 3 (+ parameters)."""
    max_learner_restarts: int = 1
    """Rebuilds of the learner group after a rank dies or hangs (from the last checkpoint, replaying
    the updates since; the lost step re-runs once); 0: fail fast naming the rank and the call."""
    cpus_per_learner: float = 1.0
    """Logical CPUs per learner rank."""
    gpus_per_learner: float = 0.0
    """GPUs per learner rank (1 on a GPU cluster)."""
    dist_backend: Literal["gloo", "nccl"] = "gloo"
    """Collective backend of the learner group (gloo on CPU, nccl on GPUs)."""
    master_port: int | None = None
    """TCP port of the learner group's rendezvous (None: a free one; give distinct ones to parallel runs)."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """Placement-group strategy for the learner ranks (STRICT_PACK keeps a group on one node)."""
    sleep_engines: bool = False
    """Colocated layouts: the rollout engines free their accelerator memory during each update and
    wake before the weight sync (vLLM sleep mode level 1, an HF model moved to host memory). Where
    the platform cannot (CPU), the engines stay up and the step logs ``engines_slept`` 0. Not with
    async_mode (generation runs during the update there)."""
    async_mode: bool = False
    """Overlap the generation of step k+1 with the update of step k (off: strictly on-policy)."""
    max_staleness: int = 1
    """Async: at most this many weight versions between a trajectory's sampler and the trained
    policy; groups with a staler trajectory are dropped before the update, never trained on."""
    call_timeout_s: float = 900.0
    """Bound on one learner call (an update, a checkpoint): a hang fails fast with the call's name."""
    sync_timeout_s: float = 120.0
    """Bound on one weight transfer to the workers and on the probe check (broadcast: on each collective)."""
    weight_transport: Literal["object_store", "broadcast"] = "object_store"
    """How weights reach the rollout workers: object_store (learner rank 0 -> Ray object store ->
    workers) or broadcast (a standalone gloo/NCCL group, per dist_backend, between learner rank 0
    and every worker; recommended on GPUs; NCCL needs whole, distinct GPUs per rank)."""
    weight_bucket_mb: float = 1024.0
    """Broadcast: the most bytes (MiB) one collective moves (weights go as flat buffers per dtype)."""
    probe_tol: float = 1e-5
    """Max |Δlogp| between a worker's and the learner's logprobs of the probe after a sync."""
    probe_tokens: int = 8
    """Tokens the probe generates greedily (its logprobs are compared)."""
    max_restarts: int = 3
    """Restarts of a dead rollout worker (its unfinished episodes re-run on a live worker)."""
    max_episode_retries: int = 3
    """Re-runs of one episode lost to worker deaths before the run fails."""
    env_vars: dict[str, str] = field(default_factory=dict)
    """Extra environment of every actor (runtime_env), e.g. NCCL or vLLM settings."""
    torch_extensions_dir: str | None = None
    """Where DeepSpeed JIT-builds its ops (None: <venv>/torch_extensions, built once per venv)."""

    def __post_init__(self) -> None:
        if self.rollout_workers < 1 or self.learners < 1:
            raise ValueError("rollout_workers and learners must be >= 1")
        if self.learner_strategy not in ("deepspeed", "fsdp2"):
            raise ValueError(f"learner_strategy must be 'deepspeed' or 'fsdp2', not {self.learner_strategy!r}")
        if self.max_learner_restarts < 0:
            raise ValueError("max_learner_restarts must be >= 0")
        if self.zero_stage not in (1, 2, 3):
            raise ValueError(f"zero_stage must be 1, 2 or 3, not {self.zero_stage}")
        if self.env_workers < 0 or (self.envs_per_env_worker is not None and self.envs_per_env_worker < 1):
            raise ValueError("env_workers must be >= 0 and envs_per_env_worker >= 1")
        if self.weight_transport not in ("object_store", "broadcast"):
            raise ValueError(f"weight_transport must be 'object_store' or 'broadcast', not {self.weight_transport!r}")
        if self.weight_transport == "broadcast" and self.dist_backend == "nccl" and not (
                self.gpus_per_rollout_worker >= 1 and self.gpus_per_learner >= 1):
            # NCCL refuses two ranks on one GPU, and a CPU-only worker cannot join an NCCL group
            raise ValueError("weight_transport='broadcast' over nccl needs a whole GPU per rollout worker and learner "
                             "rank; use weight_transport='object_store' for colocated or fractional GPUs")
        if self.max_staleness < 0:
            raise ValueError("max_staleness must be >= 0")
        if self.sleep_engines and self.async_mode:
            raise ValueError("sleep_engines needs async_mode off: async generation runs during the update")
        if self.async_mode and self.max_staleness < 1:
            raise ValueError("async_mode needs max_staleness >= 1 (the next step samples with the previous weights)")
