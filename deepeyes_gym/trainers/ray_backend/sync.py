"""Weight sync learner -> rollout workers: time-outs, version stamps and the probe check.

Transport: the learner's rank 0 returns its state dict as a Ray object (the object store moves
it once per node; workers on the learner's node read it from shared memory). HF workers
``load_state_dict`` under the model lock; vLLM workers ``reload_weights`` then reset the prefix
cache (without the reset they sample from stale cached state). Every sync is stamped with the
learner's version; every trajectory carries the version that sampled it. After each sync the
probe check makes each worker generate greedily from a fixed prompt and compares its logprobs
with the learner's forward pass of the same ids: a worker that missed the sync, or loaded the
wrong or half the weights, fails it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

__all__ = ["SyncTimeoutError", "StaleWeightsError", "WeightSync", "timed_get", "timed_await"]


class SyncTimeoutError(TimeoutError):
    """A remote call or collective did not answer in time (a hang, not a slow step)."""


class StaleWeightsError(RuntimeError):
    """A worker's probe logprobs differ from the learner's: it does not sample with the learner's weights."""


def timed_get(refs: Any, timeout_s: float, what: str) -> Any:
    """``ray.get`` bounded by ``timeout_s``; a hang raises :class:`SyncTimeoutError` naming ``what``."""
    import ray

    try:
        return ray.get(refs, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError as exc:
        raise SyncTimeoutError(f"{what}: no answer within {timeout_s:.0f} s (a hung collective or a stuck actor; "
                               "see the actors' logs under /tmp/ray/session_latest/logs)") from exc


async def timed_await(refs: Sequence[Any], timeout_s: float, what: str) -> list[Any]:
    """The awaitable form of :func:`timed_get` (the event loop keeps running other work)."""
    futs = [asyncio.wrap_future(r.future()) for r in refs]
    try:
        return list(await asyncio.wait_for(asyncio.gather(*futs), timeout_s))
    except asyncio.TimeoutError as exc:
        raise SyncTimeoutError(f"{what}: no answer within {timeout_s:.0f} s (a hung collective or a stuck actor)") from exc


class WeightSync:
    """Pushes the learner group's weights to a :class:`~.workers.WorkerPool` and checks them."""

    def __init__(self, learners: Any, pool: Any, probe_ids: Sequence[int], *, timeout_s: float = 120.0,
                 probe_tol: float = 1e-5, probe_tokens: int = 8) -> None:
        self.learners, self.pool = learners, pool
        self.probe_ids = list(probe_ids)
        self.timeout_s, self.probe_tol, self.probe_tokens = timeout_s, probe_tol, probe_tokens
        self.last_probe_diff: float | None = None

    async def push(self, version: int) -> None:
        """Send the learner's current weights to every worker, stamped ``version``."""
        ref = await self.learners.state_dict_ref()
        self.pool.state_ref, self.pool.version = ref, version
        got = await timed_await([w.load_weights.remote(ref, version) for w in self.pool.workers], self.timeout_s,
                                f"weight sync v{version} to {len(self.pool.workers)} rollout workers")
        if any(v != version for v in got):
            raise StaleWeightsError(f"weight sync v{version}: workers acknowledged {got}")

    async def verify(self) -> float:
        """The probe check: max |Δlogp| over workers; raises :class:`StaleWeightsError` above the tolerance."""
        outs = await timed_await([w.probe.remote(self.probe_ids, self.probe_tokens) for w in self.pool.workers],
                                 self.timeout_s, "probe generation on the rollout workers")
        versions = await timed_await([w.version.remote() for w in self.pool.workers], self.timeout_s, "worker versions")
        worst = 0.0
        for i, ((ids, lps), v) in enumerate(zip(outs, versions)):
            ref = await self.learners.probe_logprobs(self.probe_ids + ids, len(ids))
            diff = max((abs(a - b) for a, b in zip(lps, ref)), default=0.0)
            if diff > self.probe_tol:
                raise StaleWeightsError(
                    f"rollout worker {i} (weights v{v}) differs from the learner (v{self.learners.version}) by "
                    f"{diff:.2e} in probe logprobs (tolerance {self.probe_tol:.0e}): stale or corrupt weights")
            worst = max(worst, diff)
        self.last_probe_diff = worst
        return worst
