"""The learner group: N data-parallel ranks (Ray actors) running DeepSpeed ZeRO on one
torch.distributed group (gloo on CPU, nccl on GPUs).

The update is ``rl._update`` sharded: the same seeded permutation per epoch on every rank, each
mini-batch split across ranks by position, each rank's sequences scaled by the mini-batch's
global token count, so the all-reduced gradient is the single-process one (DeepSpeed averages
over ranks; each loss is multiplied by the world size to make that a sum). Ranks run the same
number of backward passes per mini-batch (a rank short of sequences runs a zero-weighted one),
so every collective matches.
"""

from __future__ import annotations

import math
import os
import socket
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

__all__ = ["LearnerRank", "LearnerGroup", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LearnerRank:
    """One rank: the model, DeepSpeed's engine, the scheduler and the update generator."""

    def __init__(self, rank: int, world: int, master: tuple[str, int], model_dir: str, cfg: Any, algo: Any,
                 zero_stage: int, dist_backend: str, timeout_s: float) -> None:
        import torch

        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR=master[0], MASTER_PORT=str(master[1]))
        import deepspeed

        from ...agents.hf import load_model
        from ..optim import make_optimizer

        torch.manual_seed(cfg.seed)
        torch.use_deterministic_algorithms(cfg.deterministic)
        deepspeed.init_distributed(dist_backend=dist_backend, timeout=timedelta(seconds=timeout_s))
        self.rank, self.world, self.cfg, self.algo = rank, world, cfg, algo
        device = "cuda" if dist_backend == "nccl" else "cpu"
        model = load_model(model_dir, device=device)
        model.eval()  # no dropout: the sampler and the learner compute the same function
        opt, self.sched = make_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas),
                                         total_steps=cfg.steps, warmup_steps=cfg.warmup_steps, schedule="constant")
        ds_config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                     "gradient_clipping": cfg.grad_clip, "zero_optimization": {"stage": zero_stage},
                     "steps_per_print": 1 << 30, "wall_clock_breakdown": False}
        # the scheduler stays ours (stepped once per training step, as in rl.py); it edits the
        # client optimizer's param groups, which ZeRO keeps
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds_config)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.version = 0
        self.model_dir = model_dir

    def update(self, trajs: list[Any], adv: Any, max_staleness: int) -> dict[str, Any]:
        """One training step's ``ppo_epochs`` × mini-batches; returns this rank's sums (the group
        adds them up). Refuses any trajectory staler than ``max_staleness``."""
        import torch

        from ...agents.hf import logprob_mismatch
        from ..rl_steps import pad_to_sequence, sequence_loss, token_logprobs_entropy

        stale = [self.version - t.weight_version for t in trajs]
        if stale and max(stale) > max_staleness:
            raise RuntimeError(f"refusing to train on a trajectory {max(stale)} versions stale (bound {max_staleness})")
        cfg, algo, n, mbs = self.cfg, self.algo, len(trajs), self.cfg.mini_batch
        perms = [torch.randperm(n, generator=self.gen).tolist() for _ in range(cfg.ppo_epochs)]
        shards = [[p[s:s + mbs][self.rank::self.world] for s in range(0, n, mbs)] for p in perms]
        model = self.engine.module
        with torch.no_grad():  # old logprobs with the pre-update weights, for every index this rank trains
            old = {i: token_logprobs_entropy(model, trajs[i])[0] for sh in shards for part in sh for i in part}
        first = [i for part in shards[0] for i in part]  # each trajectory in exactly one rank's first epoch
        mm = {"n_tokens": 0, "sum_abs": 0.0, "max_abs": 0.0, "sum_k3": 0.0}
        if first:
            masks = torch.cat([torch.tensor(pad_to_sequence(trajs[i], trajs[i].response_mask)) for i in first])
            roll = torch.cat([torch.tensor(pad_to_sequence(trajs[i], trajs[i].logprobs), dtype=torch.float32) for i in first])
            m = logprob_mismatch(roll, torch.cat([old[i] for i in first]), masks)
            mm = {"n_tokens": m["n_tokens"], "sum_abs": m["mean_abs"] * m["n_tokens"], "max_abs": m["max_abs"],
                  "sum_k3": m["kl_k3"] * m["n_tokens"]}
        sums: Counter[str] = Counter()
        losses: list[float] = []
        ent_sum = ent_n = 0.0
        for p in perms:
            for s in range(0, n, mbs):
                mb = p[s:s + mbs]
                local = mb[self.rank::self.world]
                n_tok = sum(trajs[i].n_sampled for i in mb)
                k = math.ceil(len(mb) / self.world)
                mb_loss = 0.0
                for j in range(k):
                    real = j < len(local)
                    i = local[j] if real else mb[0]
                    t = trajs[i]
                    # A padding pass (this rank has fewer sequences) is scaled by 0 below.
                    loss, met, ent, mask = sequence_loss(model, t, old[i], adv[i], cfg, algo,
                                                         global_tokens=n_tok, global_seqs=len(mb))
                    self.engine.set_gradient_accumulation_boundary(j == k - 1)
                    self.engine.backward(loss * (self.world if real else 0.0), scale_wrt_gas=False)
                    if real:
                        mb_loss += loss.item()
                        for key, v in met.items():
                            sums[key] += v * t.n_sampled
                        ent_sum += float((ent * mask).sum())
                        ent_n += float(mask.sum())
                self.engine.step()
                if self.rank == 0:  # the global norm (before clipping), counted once
                    sums["grad_norm"] += float(self.engine.get_global_grad_norm()) * max(n_tok, 1)
                losses.append(mb_loss)
        self.sched.step()
        self.version += 1
        return {"sums": dict(sums), "losses": losses, "ent": (ent_sum, ent_n), "mismatch": mm,
                "updates": len(losses), "lr": self.sched.get_last_lr()[0], "version": self.version,
                "staleness_max": max(stale, default=0)}

    def state_dict(self) -> dict[str, Any] | None:
        """Full weights on rank 0 (None elsewhere); collective under ZeRO-3 (parameters gathered)."""
        import deepspeed

        model = self.engine.module
        params = list(model.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=self.engine.zero_optimization_stage() == 3):
            sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()} if self.rank == 0 else None
        return sd

    def probe_logprobs(self, ids: list[int], n_last: int) -> list[float]:
        """Logprobs of the last ``n_last`` ids of ``ids`` under the current weights."""
        import torch

        from ...agents.hf import sequence_logprobs

        with torch.no_grad():
            lp = sequence_logprobs(self.engine.module, torch.tensor(ids), None, torch.ones(len(ids)))
        return lp[len(ids) - n_last:].tolist()

    def save(self, path: str, extra: dict[str, Any]) -> None:
        """Checkpoint (collective): DeepSpeed's sharded state + (rank 0) HF weights and trainer state."""
        import torch

        from ..checkpoint import copy_model_files

        self.engine.save_checkpoint(str(Path(path) / "deepspeed"), tag="state")
        if self.rank == 0:
            self.engine.module.save_pretrained(Path(path) / "model", safe_serialization=True)
            copy_model_files(self.model_dir, Path(path) / "model")
            torch.save({"sched": self.sched.state_dict(), "gen": self.gen.get_state(), "version": self.version,
                        "extra": extra}, Path(path) / "trainer_state.pt")

    def load(self, path: str) -> dict[str, Any]:
        """Resume from :meth:`save`'s directory (collective); returns the saved ``extra``."""
        import torch

        self.engine.load_checkpoint(str(Path(path) / "deepspeed"), tag="state")
        state = torch.load(Path(path) / "trainer_state.pt", weights_only=False)
        self.sched.load_state_dict(state["sched"])
        self.gen.set_state(state["gen"])
        self.version = int(state["version"])
        return {"extra": state["extra"], "version": self.version}


class LearnerGroup:
    """Driver-side handle: creates the ranks in a placement group, calls them with time-outs,
    sums their results. ``version`` counts updates (the weights' version)."""

    def __init__(self, model_dir: str, cfg: Any, algo: Any, ray_cfg: Any) -> None:
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from .sync import timed_get

        self.timeout_s = ray_cfg.call_timeout_s
        bundle = {"CPU": ray_cfg.cpus_per_learner, **({"GPU": ray_cfg.gpus_per_learner} if ray_cfg.gpus_per_learner else {})}
        self.pg = placement_group([bundle] * ray_cfg.learners, strategy=ray_cfg.placement_strategy)
        timed_get(self.pg.ready(), self.timeout_s, f"placement group for {ray_cfg.learners} learners (not enough resources?)")
        ext = ray_cfg.torch_extensions_dir or os.path.join(sys.prefix, "torch_extensions")
        env = {"TORCH_EXTENSIONS_DIR": ext, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), **ray_cfg.env_vars}
        master = (ray.util.get_node_ip_address(), ray_cfg.master_port or free_port())
        cls = ray.remote(LearnerRank)
        self.ranks = [cls.options(num_cpus=ray_cfg.cpus_per_learner, num_gpus=ray_cfg.gpus_per_learner,
                                  runtime_env={"env_vars": env},
                                  scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=r))
                      .remote(r, ray_cfg.learners, master, model_dir, cfg, algo, ray_cfg.zero_stage,
                              ray_cfg.dist_backend, self.timeout_s) for r in range(ray_cfg.learners)]
        timed_get([r.__ray_ready__.remote() for r in self.ranks], self.timeout_s,
                  "learner group start-up (torch.distributed rendezvous, DeepSpeed init)")
        self.version = 0
        self.ppo_epochs = cfg.ppo_epochs

    async def update(self, trajs: list[Any], adv: Any, max_staleness: int) -> dict[str, Any]:
        """One step's updates on every rank; the summed metrics in rl._update's form."""
        import ray

        from .sync import timed_await

        ref = ray.put(trajs)
        outs = await timed_await([r.update.remote(ref, adv, max_staleness) for r in self.ranks], self.timeout_s,
                                 f"learner update to v{self.version + 1}")
        self.version = outs[0]["version"]
        sums: Counter[str] = Counter()
        for o in outs:
            sums.update(o["sums"])
        total_w = max(sum(t.n_sampled for t in trajs) * self.ppo_epochs, 1)
        row = {k: v / total_w for k, v in sums.items() if k != "ratio_max"}
        losses = [sum(x) for x in zip(*(o["losses"] for o in outs))]
        row["loss"] = sum(losses) / len(losses) if losses else 0.0
        ent = [sum(o["ent"][0] for o in outs), sum(o["ent"][1] for o in outs)]
        row["entropy"] = ent[0] / max(ent[1], 1)
        row["updates"] = outs[0]["updates"]
        mm = [o["mismatch"] for o in outs]
        n_tok = max(sum(m["n_tokens"] for m in mm), 1)
        row.update({"mismatch_mean_abs": sum(m["sum_abs"] for m in mm) / n_tok,
                    "mismatch_max_abs": max(m["max_abs"] for m in mm), "mismatch_kl": sum(m["sum_k3"] for m in mm) / n_tok,
                    "lr": outs[0]["lr"], "staleness_max": outs[0]["staleness_max"]})
        return row

    async def state_dict_ref(self) -> Any:
        """A Ray object holding the full weights (rank 0's), every rank having taken part."""
        from .sync import timed_await

        refs = [r.state_dict.remote() for r in self.ranks]
        await timed_await(refs[1:], self.timeout_s, "gathering the weights") if len(refs) > 1 else None
        await timed_await(refs[:1], self.timeout_s, "gathering the weights")
        return refs[0]

    async def probe_logprobs(self, ids: list[int], n_last: int) -> list[float]:
        from .sync import timed_await

        (out,) = await timed_await([self.ranks[0].probe_logprobs.remote(ids, n_last)], self.timeout_s, "learner probe")
        return out

    def save(self, path: str, extra: dict[str, Any]) -> None:
        from .sync import timed_get

        timed_get([r.save.remote(path, extra) for r in self.ranks], self.timeout_s, f"checkpoint to {path}")

    def load(self, path: str) -> dict[str, Any]:
        from .sync import timed_get

        outs = timed_get([r.load.remote(path) for r in self.ranks], self.timeout_s, f"resume from {path}")
        self.version = outs[0]["version"]
        return outs[0]["extra"]

    def close(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for r in self.ranks:
            ray.kill(r, no_restart=True)
        self.ranks = []
        remove_placement_group(self.pg)
