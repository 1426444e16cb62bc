"""The learner group: N data-parallel ranks (Ray actors) on one torch.distributed group (gloo on
CPU, nccl on GPUs), sharded by DeepSpeed ZeRO or by torch FSDP2 (``RayConfig.learner_strategy``).

The update is ``rl._update`` sharded, one body for both engines: the same seeded permutation per
epoch on every rank, each mini-batch split across ranks by position, each rank's sequences scaled
by the mini-batch's global token count, so the all-reduced gradient is the single-process one
(both engines average over ranks; each loss is multiplied by the world size to make that a sum).
Ranks run the same number of forward and backward passes (a rank short of sequences runs
zero-weighted ones): under ZeRO-3 and FSDP2 every forward is a collective. They also run the same
modules: a rank whose sequence has no image while a peer's has runs the vision tower on a dummy
image (:class:`_VisionLockstep`), else the ranks' collectives would no longer pair up.

A rank that dies or hangs costs a rebuild of the whole group (``max_learner_restarts``): from the
last checkpoint it saved or loaded (else the model dir), with the updates since replayed from
their trajectories (kept in the object store until the next checkpoint), then the failed call
runs again. With no rebuild left the error names the rank and the call.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

__all__ = ["LearnerRank", "LearnerGroup", "LearnerFailedError", "free_port"]

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LearnerFailedError(RuntimeError):
    """A learner rank died or hung and the group may not (``max_learner_restarts``) or could not be rebuilt."""


class _RankLost(Exception):
    """Ranks ``ranks`` died (or, ``hung``, did not answer) during the call ``what``."""

    def __init__(self, ranks: list[int], what: str, cause: BaseException, hung: bool = False) -> None:
        self.ranks, self.what, self.cause, self.hung = ranks, what, cause, hung
        inner = getattr(cause, "cause", None) or cause  # a RayTaskError's own exception
        first = (str(inner).strip().splitlines() or [""])[0]
        state = "did not answer" if hung else "died"
        super().__init__(f"learner rank{'s' * (len(ranks) > 1)} {', '.join(map(str, ranks))} {state} during "
                         f"'{what}' ({type(inner).__name__}: {first})")


def _quiet(fut: asyncio.Future) -> asyncio.Future:
    """``fut``, its exception marked retrieved: a call abandoned after another rank failed first
    fails too, and asyncio would log it as never retrieved."""
    fut.add_done_callback(lambda f: f.cancelled() or f.exception())
    return fut


def _is_timeout(exc: BaseException) -> bool:
    """Whether a rank's error is a collective's time-out (gloo "timed out", NCCL's watchdog "timeout")."""
    msg = str(getattr(exc, "cause", None) or exc).lower()
    return "timed out" in msg or "timeout" in msg


def _optimizer(model: Any, cfg: Any) -> tuple[Any, Any]:
    """The single-process trainer's AdamW and scheduler (stepped once per training step)."""
    from ..optim import make_optimizer

    return make_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas),
                          total_steps=cfg.steps, warmup_steps=cfg.warmup_steps, schedule="constant")


class _DeepSpeed:
    """DeepSpeed ZeRO behind the few operations the shared update body needs."""

    def __init__(self, model_dir: str, cfg: Any, zero_stage: int, dist_backend: str, timeout: timedelta) -> None:
        import deepspeed

        from ...agents.hf import load_model

        deepspeed.init_distributed(dist_backend=dist_backend, timeout=timeout)
        model = load_model(model_dir, device="cuda" if dist_backend == "nccl" else "cpu")
        model.eval()  # no dropout: the sampler and the learner compute the same function
        opt, self.sched = _optimizer(model, cfg)
        ds_config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                     "gradient_clipping": cfg.grad_clip, "zero_optimization": {"stage": zero_stage},
                     "steps_per_print": 1 << 30, "wall_clock_breakdown": False}
        # the scheduler stays ours; it edits the client optimizer's param groups, which ZeRO keeps
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds_config)
        self.model = self.engine.module

    def backward(self, loss: Any, boundary: bool) -> None:
        self.engine.set_gradient_accumulation_boundary(boundary)
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self) -> float:
        """Clip, step, zero the gradients; the global gradient norm before clipping."""
        self.engine.step()
        return float(self.engine.get_global_grad_norm())

    def full_state_dict(self, keep: bool) -> dict[str, Any] | None:
        import deepspeed

        stage3 = self.engine.zero_optimization_stage() == 3
        with deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=None, enabled=stage3):
            return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()} if keep else None

    def save(self, path: Path) -> None:
        self.engine.save_checkpoint(str(path / "deepspeed"), tag="state")

    def load(self, path: Path) -> None:
        self.engine.load_checkpoint(str(path / "deepspeed"), tag="state")


class _FSDP2:
    """torch FSDP2: ``fully_shard`` on every block the model lists as unsplittable (decoder layers,
    vision blocks), then on the root; the single-process trainer's AdamW, scheduler and clipping."""

    def __init__(self, model_dir: str, cfg: Any, dist_backend: str, timeout: timedelta) -> None:
        import torch
        import torch.distributed as dist
        from torch.distributed.fsdp import fully_shard

        from ...agents.hf import load_model

        device = "cpu"
        if dist_backend == "nccl":
            torch.cuda.set_device(0)  # Ray shows each rank its own GPU only
            device = "cuda"
        dist.init_process_group(dist_backend, timeout=timeout)
        model = load_model(model_dir, device=device)
        model.eval()
        blocks = set(getattr(model, "_no_split_modules", None) or ())
        for module in list(model.modules()):
            if type(module).__name__ in blocks:
                fully_shard(module)
        fully_shard(model)
        self.model = model
        self.opt, self.sched = _optimizer(model, cfg)  # after sharding: over the DTensor parameters
        self.grad_clip = cfg.grad_clip

    def backward(self, loss: Any, boundary: bool) -> None:
        loss.backward()  # each pass reduce-scatters (averages) its gradients: no unsharded copy kept

    def step(self) -> float:
        import torch

        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def full_state_dict(self, keep: bool) -> dict[str, Any] | None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return sd if keep else None

    def save(self, path: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        msd, osd = get_state_dict(self.model, self.opt)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(path / "fsdp"))

    def load(self, path: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import DefaultLoadPlanner
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict, set_model_state_dict,
                                                             set_optimizer_state_dict)

        msd, osd = get_state_dict(self.model, self.opt)
        state = {"model": msd, "optim": osd}
        # A parameter that never had a gradient has no AdamW state in the checkpoint, while a fresh
        # optimizer's template has one for every parameter: load what is there.
        dcp.load(state, checkpoint_id=str(path / "fsdp"), planner=DefaultLoadPlanner(allow_partial_load=True))
        set_model_state_dict(self.model, state["model"])
        set_optimizer_state_dict(self.model, self.opt, state["optim"], options=StateDictOptions(strict=False))


class _VisionLockstep:
    """Keeps a rank's modules in step with its peers' on a pass where its sequence has no image and
    a peer's has: sharded engines gather a block's parameters (ZeRO-3, FSDP2) and reduce its
    gradients (all of them) in collectives issued as the block runs, so a vision tower that runs on
    one rank only leaves them unpaired: gloo aborts on the size mismatch, NCCL hangs. While ``on``,
    a hook before the language model runs the vision tower on a blank image of 2×2 merged tokens
    and adds 0 × its output to the input embeddings, where the image's features would go:
    the same collectives in the same order, unchanged logits and zero gradients (the peer's image
    gradients are the mini-batch's, as in the single-process update). verl does the same.

    ``every_pass`` (ZeRO-3): on every pass of an image-less sequence, peers or not. ZeRO-3 steps
    each parameter from its slice of a flat gradient buffer that only a gradient overwrites, so a
    vision tower that got none in an update would be stepped with its previous update's gradient;
    the dummy pass makes it a true zero."""

    def __init__(self, model: Any, every_pass: bool = False) -> None:
        inner = getattr(model, "model", None)
        self.visual = getattr(inner, "visual", None)
        self.every_pass = every_pass
        self.on = False
        lm = getattr(inner, "language_model", None)
        if self.visual is not None and lm is not None:
            # first: before ZeRO-3's own hook there fetches (and records) the language model
            lm.register_forward_pre_hook(self._run, with_kwargs=True, prepend=True)
        elif self.visual is not None:
            raise TypeError(f"{type(model).__name__}: a vision tower but no language_model to run it before")

    def set(self, has_image: list[bool], rank: int) -> None:
        """This pass's images per rank (rank order)."""
        self.on = self.visual is not None and not has_image[rank] and (self.every_pass or any(has_image))

    def _run(self, module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        import torch

        if not self.on:
            return None
        vc = self.visual.config
        side = 2 * vc.spatial_merge_size  # 2×2 merged tokens (4×4 patches on Qwen2.5-VL, verl's dummy too)
        emb = kwargs["inputs_embeds"]
        pixels = torch.zeros(side * side, vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2,
                             dtype=self.visual.dtype, device=emb.device)
        feats = self.visual(pixels, grid_thw=torch.tensor([[1, side, side]], device=emb.device)).pooler_output
        kwargs["inputs_embeds"] = emb + 0.0 * feats.sum().to(emb.dtype)
        return args, kwargs


class LearnerRank:
    """One rank: the sharded model (``shards``: DeepSpeed or FSDP2), the scheduler and the update generator."""

    def __init__(self, rank: int, world: int, master: tuple[str, int], model_dir: str, cfg: Any, algo: Any,
                 ray_cfg: Any) -> None:
        import faulthandler

        import torch

        faulthandler.enable()  # a native crash (SIGSEGV, SIGABRT) leaves the Python stack in the worker's log
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR=master[0], MASTER_PORT=str(master[1]))
        torch.manual_seed(cfg.seed)
        torch.use_deterministic_algorithms(cfg.deterministic)
        # Deterministic mode also NaN-fills every torch.empty; ZeRO allocates large flat buffers
        # (written before they are read) on every backward, which that made ~100x slower on CPU.
        torch.utils.deterministic.fill_uninitialized_memory = False
        timeout = timedelta(seconds=ray_cfg.call_timeout_s)
        if ray_cfg.learner_strategy == "fsdp2":
            self.shards: Any = _FSDP2(model_dir, cfg, ray_cfg.dist_backend, timeout)
        else:
            self.shards = _DeepSpeed(model_dir, cfg, ray_cfg.zero_stage, ray_cfg.dist_backend, timeout)
        self.model, self.sched = self.shards.model, self.shards.sched
        self.lockstep = _VisionLockstep(self.model, every_pass=ray_cfg.learner_strategy == "deepspeed"
                                        and ray_cfg.zero_stage == 3)
        self.rank, self.world, self.cfg, self.algo = rank, world, cfg, algo
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.version = 0
        self.model_dir = model_dir

    def update(self, trajs: list[Any], adv: Any, max_staleness: int) -> dict[str, Any]:
        """One training step's ``ppo_epochs`` × mini-batches; returns this rank's sums (the group
        adds them up). Refuses any trajectory staler than ``max_staleness``."""
        try:
            return self._update(trajs, adv, max_staleness)
        finally:
            self.lockstep.on = False  # the probe and the weight gather run text only, on every rank

    def _update(self, trajs: list[Any], adv: Any, max_staleness: int) -> dict[str, Any]:
        import torch

        from ...agents.hf import logprob_mismatch
        from ..rl_steps import pad_to_sequence, sequence_loss, token_logprobs_entropy

        stale = [self.version - t.weight_version for t in trajs]
        if stale and max(stale) > max_staleness:
            raise RuntimeError(f"refusing to train on a trajectory {max(stale)} versions stale (bound {max_staleness})")
        cfg, algo, n, mbs, world = self.cfg, self.algo, len(trajs), self.cfg.mini_batch, self.world
        perms = [torch.randperm(n, generator=self.gen).tolist() for _ in range(cfg.ppo_epochs)]
        batches = [p[s:s + mbs] for p in perms for s in range(0, n, mbs)]  # every epoch's mini-batches, in order
        # the same permutations on every rank: each knows every rank's share
        share = [sorted({i for mb in batches for i in mb[r::world]}) for r in range(world)]
        model, has_image = self.model, [t.pixel_values is not None for t in trajs]
        old: dict[int, Any] = {}
        with torch.no_grad():  # old logprobs with the pre-update weights, for every index this rank trains
            for p in range(max(map(len, share))):  # as many (collective) forwards as the busiest rank
                idx = [s[p] if p < len(s) else 0 for s in share]  # a rank short of indices re-runs 0
                self.lockstep.set([has_image[i] for i in idx], self.rank)
                lp = token_logprobs_entropy(model, trajs[idx[self.rank]])[0]
                if p < len(share[self.rank]):
                    old[idx[self.rank]] = lp
        n_first = math.ceil(n / mbs)  # each trajectory in exactly one rank's first epoch
        first = [i for mb in batches[:n_first] for i in mb[self.rank::world]]
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
        for mb in batches:
            local = mb[self.rank::world]
            n_tok = sum(trajs[i].n_sampled for i in mb)
            k = math.ceil(len(mb) / world)
            mb_loss = 0.0
            for j in range(k):
                real = j < len(local)
                idx = [mb[r::world][j] if j < len(mb[r::world]) else mb[0] for r in range(world)]
                self.lockstep.set([has_image[x] for x in idx], self.rank)
                i = idx[self.rank]
                t = trajs[i]
                # A padding pass (this rank has fewer sequences) is scaled by 0 below; mb[0] may be
                # another rank's, without old logprobs here: zeros keep its (unused) loss finite.
                old_i = old[i] if i in old else torch.zeros(len(t.input_ids))
                loss, met, ent, mask = sequence_loss(model, t, old_i, adv[i], cfg, algo,
                                                     global_tokens=n_tok, global_seqs=len(mb))
                self.shards.backward(loss * (world if real else 0.0), boundary=j == k - 1)
                if real:
                    mb_loss += loss.item()
                    for key, v in met.items():
                        sums[key] += v * t.n_sampled
                    ent_sum += float((ent * mask).sum())
                    ent_n += float(mask.sum())
            norm = self.shards.step()
            if self.rank == 0:  # the global norm (before clipping), counted once
                sums["grad_norm"] += norm * max(n_tok, 1)
            losses.append(mb_loss)
        self.sched.step()
        self.version += 1
        return {"sums": dict(sums), "losses": losses, "ent": (ent_sum, ent_n), "mismatch": mm,
                "updates": len(losses), "lr": self.sched.get_last_lr()[0], "version": self.version,
                "staleness_max": max(stale, default=0)}

    def state_dict(self) -> dict[str, Any] | None:
        """Full weights on rank 0 (None elsewhere); collective (all ranks call it) under ZeRO-3 and FSDP2."""
        return self.shards.full_state_dict(self.rank == 0)

    def probe_logprobs(self, ids: list[int], n_last: int) -> list[float]:
        """Logprobs of the last ``n_last`` ids of ``ids`` under the current weights (collective:
        under ZeRO-3 and FSDP2 the forward gathers parameters, so every rank runs it)."""
        import torch

        from ...agents.hf import sequence_logprobs

        with torch.no_grad():
            lp = sequence_logprobs(self.model, torch.tensor(ids), None, torch.ones(len(ids)))
        return lp[len(ids) - n_last:].tolist()

    def save(self, path: str, extra: dict[str, Any]) -> None:
        """Checkpoint (collective): the engine's sharded state (``deepspeed/`` or ``fsdp/``), and on
        rank 0 the full HF weights (``model/``) and the trainer state."""
        import torch

        from ..checkpoint import copy_model_files

        self.shards.save(Path(path))
        sd = self.state_dict()  # gathered from the shards, so ZeRO-3 and FSDP2 save whole tensors
        if self.rank == 0:
            self.model.save_pretrained(Path(path) / "model", state_dict=sd, safe_serialization=True)
            copy_model_files(self.model_dir, Path(path) / "model")
            torch.save({"sched": self.sched.state_dict(), "gen": self.gen.get_state(), "version": self.version,
                        "extra": extra}, Path(path) / "trainer_state.pt")

    def load(self, path: str) -> dict[str, Any]:
        """Resume from :meth:`save`'s directory (collective); returns the saved ``extra``."""
        import torch

        self.shards.load(Path(path))
        state = torch.load(Path(path) / "trainer_state.pt", weights_only=False)
        self.sched.load_state_dict(state["sched"])
        self.gen.set_state(state["gen"])
        self.version = int(state["version"])
        return {"extra": state["extra"], "version": self.version}


    # ---- collective weight sync: the broadcast root (weight_transport="broadcast"; sync.py) ----

    def wsync_store(self) -> tuple[str, int, str | None] | None:
        """Rank 0: the address of the weight-sync TCPStore it hosts (started on first use) and
        the main group it holds; other ranks: None."""
        return self._wsync_root().state() if self.rank == 0 else None

    def wsync_join(self, prefix: str, size: int, backend: str, timeout_s: float, main: bool) -> None:
        """Rank 0: join weight-sync group ``prefix`` as its root (rank 0 of ``size``); others: nothing."""
        if self.rank == 0:
            self._wsync_root().join(prefix, size, backend, timeout_s, main)

    def wsync_send(self, prefix: str, bucket_bytes: int) -> int:
        """Every rank (gathering the full weights is collective under ZeRO-3/FSDP2): rank 0
        broadcasts them over group ``prefix`` stamped with its version; returns the version."""
        state = self.state_dict()
        if self.rank == 0:
            self._wsync_root().send(prefix, state, self.version, bucket_bytes)
        return self.version

    def _wsync_root(self) -> Any:
        from .sync import BroadcastRoot

        if getattr(self, "_wsync", None) is None:
            import ray

            self._wsync = BroadcastRoot(ray.util.get_node_ip_address())
        return self._wsync

    # ---- end of the weight-sync block ----

class LearnerGroup:
    """Driver-side handle: creates the ranks in a placement group, calls them with time-outs,
    sums their results. ``version`` counts updates (the weights' version).

    The constructor places and starts the ranks; :meth:`ready` waits for them. Every call goes
    through :meth:`_call`: a rank that dies (``RayActorError``) or does not answer
    within ``call_timeout_s`` makes the group rebuild itself (:meth:`_rebuild`, at most
    ``max_learner_restarts`` times, counted in ``restarts``) and run the call again, so callers see
    the call succeed once; the rollout workers then need the (same) weights again, which the
    trainer does when ``restarts`` moved. Without a rebuild left, :class:`LearnerFailedError`.
    """

    def __init__(self, model_dir: str, cfg: Any, algo: Any, ray_cfg: Any) -> None:
        self.model_dir, self.cfg, self.algo, self.ray_cfg = model_dir, cfg, algo, ray_cfg
        self.timeout_s = ray_cfg.call_timeout_s
        self.version = 0
        self.ppo_epochs = cfg.ppo_epochs
        self.restarts = 0
        self._base: str | None = None  # the checkpoint a rebuilt group restores (None: the model dir)
        self._replay: list[tuple[Any, Any, int]] = []  # (trajectories ref, advantages, bound) of updates since
        self.ranks: list[Any] = []
        self.pg: Any = None
        self._starting = self._spawn(ray_cfg.master_port)  # the ranks start while the caller goes on

    async def ready(self) -> None:
        """Wait for the ranks' start-up (torch.distributed rendezvous, engine init)."""
        try:
            await self._gather(self._starting, f"learner group start-up ({self.ray_cfg.learner_strategy})")
        except _RankLost as lost:  # nothing to rebuild from: a start-up that fails fails the run
            raise LearnerFailedError(str(lost)) from lost.cause

    def _spawn(self, port: int | None) -> list[Any]:
        """Place and create the ranks; returns their readiness refs (rank order)."""
        import ray
        from ray.util.placement_group import placement_group, placement_group_table
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from .sync import timed_get

        rc = self.ray_cfg
        bundle = {"CPU": rc.cpus_per_learner, **({"GPU": rc.gpus_per_learner} if rc.gpus_per_learner else {})}
        self.pg = placement_group([bundle] * rc.learners, strategy=rc.placement_strategy)
        timed_get(self.pg.ready(), self.timeout_s, f"placement group for {rc.learners} learners (not enough resources?)")
        # rank 0 hosts the rendezvous: the address of its node, which need not be the driver's
        node = placement_group_table(self.pg)["bundles_to_node_id"][0]
        host = next((n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node), ray.util.get_node_ip_address())
        ext = rc.torch_extensions_dir or os.path.join(sys.prefix, "torch_extensions")
        env = {"TORCH_EXTENSIONS_DIR": ext, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), **rc.env_vars}
        master = (host, port or free_port())
        cls = ray.remote(LearnerRank)
        self.ranks = [cls.options(num_cpus=rc.cpus_per_learner, num_gpus=rc.gpus_per_learner,
                                  runtime_env={"env_vars": env},
                                  scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=r))
                      .remote(r, rc.learners, master, self.model_dir, self.cfg, self.algo, rc) for r in range(rc.learners)]
        return [r.__ray_ready__.remote() for r in self.ranks]

    async def _gather(self, refs: list[Any], what: str) -> list[Any]:
        """The ranks' answers to ``refs`` (one per rank, rank order). A rank whose actor died, or
        ranks that did not answer in time, raise :class:`_RankLost`; the peers of a dead rank fail
        their collectives too, which is its loss, not their error. Any other error is raised as is."""
        import ray

        from .sync import SyncTimeoutError

        futs = [_quiet(asyncio.wrap_future(r.future())) for r in refs]
        done, pending = await asyncio.wait(futs, timeout=self.timeout_s, return_when=asyncio.FIRST_EXCEPTION)
        failed = [(i, f.exception()) for i, f in enumerate(futs) if f in done and f.exception() is not None]
        if not failed and not pending:
            return [f.result() for f in futs]
        if not failed:
            hung = [i for i, f in enumerate(futs) if f in pending]
            raise _RankLost(hung, what, SyncTimeoutError(f"no answer within {self.timeout_s:.0f} s (a hung collective "
                                                         "or a stuck rank)"), hung=True)
        died = [(i, e) for i, e in failed if isinstance(e, ray.exceptions.RayActorError)]
        if not died:  # a peer's collective error may arrive before the dead rank's own: ask them all
            pings = [_quiet(asyncio.wrap_future(r.__ray_ready__.remote().future())) for r in self.ranks]
            await asyncio.wait(pings, timeout=min(10.0, self.timeout_s))
            died = [(i, p.exception()) for i, p in enumerate(pings)
                    if p.done() and isinstance(p.exception(), ray.exceptions.RayActorError)]
            timeouts = [e for _, e in failed if _is_timeout(e)]
            if not died and timeouts:  # a collective timed out in a rank: its silent peers hung
                silent = [i for i, p in enumerate(pings) if not p.done()] or [i for i, _ in failed]
                raise _RankLost(silent, what, timeouts[0], hung=True)
        if died:
            raise _RankLost([i for i, _ in died], what, died[0][1])
        raise failed[0][1]

    async def _call(self, method: str, *args: Any, what: str) -> tuple[list[Any], list[Any]]:
        """``method(*args)`` on every rank: (the refs, the answers); rebuilds the group after a
        rank's loss and calls again."""
        while True:
            refs = [getattr(r, method).remote(*args) for r in self.ranks]
            try:
                return refs, await self._gather(refs, what)
            except _RankLost as lost:
                await self._rebuild(lost)

    async def _rebuild(self, lost: _RankLost) -> None:
        """Replace every rank (a survivor may be stuck in a collective with the dead one), restore
        ``_base`` and replay the updates since, so the group holds the weights, optimizer and
        generator state it had before ``lost``."""
        while True:
            limit = self.ray_cfg.max_learner_restarts
            if self.restarts >= limit:
                raise LearnerFailedError(f"{lost}; max_learner_restarts={limit}"
                                         + (f", {self.restarts} used" if limit else "") + ": not rebuilding") from lost.cause
            self.restarts += 1
            log.warning("%s; rebuilding the learner group (%d of %d) from %s and replaying %d updates", lost,
                        self.restarts, limit, self._base or self.model_dir, len(self._replay))
            self._stop()
            try:
                # a fresh port: the old rank 0 may still hold the rendezvous port while it dies
                await self._gather(self._spawn(None), f"learner group rebuild {self.restarts}")
                self.version = 0
                if self._base is not None:
                    outs = await self._gather([r.load.remote(self._base) for r in self.ranks], f"restoring {self._base}")
                    self.version = outs[0]["version"]
                for k, (ref, adv, bound) in enumerate(self._replay):
                    outs = await self._gather([r.update.remote(ref, adv, bound) for r in self.ranks],
                                              f"replaying update {k + 1}/{len(self._replay)}")
                    self.version = outs[0]["version"]
                return
            except _RankLost as again:
                lost = again

    def _stop(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for r in self.ranks:
            ray.kill(r, no_restart=True)
        self.ranks = []
        if self.pg is not None:
            remove_placement_group(self.pg)
            self.pg = None

    async def update(self, trajs: list[Any], adv: Any, max_staleness: int) -> dict[str, Any]:
        """One step's updates on every rank; the summed metrics in rl._update's form."""
        import ray

        ref = ray.put(trajs)
        _, outs = await self._call("update", ref, adv, max_staleness, what=f"learner update to v{self.version + 1}")
        self.version = outs[0]["version"]
        self._replay.append((ref, adv, max_staleness))  # for a rebuild until the next checkpoint
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
        refs, _ = await self._call("state_dict", what="gathering the weights")
        return refs[0]

    async def probe_logprobs(self, ids: list[int], n_last: int) -> list[float]:
        """Rank 0's logprobs of the probe (every rank runs the forward: a collective under ZeRO-3 and FSDP2)."""
        _, outs = await self._call("probe_logprobs", ids, n_last, what="learner probe")
        return outs[0]

    async def save(self, path: str, extra: dict[str, Any]) -> None:
        """Checkpoint to ``path``; it becomes what a rebuild restores."""
        await self._call("save", path, extra, what=f"checkpoint to {path}")
        self._base, self._replay = path, []

    async def load(self, path: str) -> dict[str, Any]:
        """Resume from ``path`` (see :meth:`LearnerRank.load`); returns the saved ``extra``."""
        _, outs = await self._call("load", path, what=f"resume from {path}")
        self.version = outs[0]["version"]
        self._base, self._replay = path, []
        return outs[0]["extra"]

    # ---- collective weight sync: the broadcast root, driver side (called by sync.WeightSync) ----

    async def wsync_store(self) -> tuple[str, int, str | None]:
        """Rank 0's weight-sync store address and main group (waits behind a running update)."""
        _, outs = await self._call("wsync_store", what="weight-sync store on learner rank 0")
        return tuple(outs[0])

    async def wsync_join(self, prefix: str, size: int, backend: str, timeout_s: float, main: bool) -> None:
        """Rank 0 joins weight-sync group ``prefix`` (the join itself times out after ``timeout_s``)."""
        await self._call("wsync_join", prefix, size, backend, timeout_s, main,
                         what=f"learner rank 0 joining weight-sync group {prefix}")

    async def wsync_send(self, prefix: str, bucket_bytes: int) -> int:
        """Every rank gathers, rank 0 broadcasts over ``prefix``; the version sent."""
        _, outs = await self._call("wsync_send", prefix, bucket_bytes, what=f"weight broadcast over {prefix}")
        return int(outs[0])

    # ---- end of the weight-sync block ----

    def close(self) -> None:
        self._stop()
        self._replay = []
