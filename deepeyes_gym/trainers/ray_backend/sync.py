"""Weight sync learner -> rollout workers: time-outs, version stamps and the probe check.

Two transports (``RayConfig.weight_transport``):

- ``object_store``: the learner's rank 0 returns its state dict as a Ray object (the object store
  moves it once per node; workers on the learner's node read it from shared memory). HF workers
  ``load_state_dict`` under the model lock; vLLM workers ``reload_weights``.
- ``broadcast``: a standalone process group (gloo on CPU, NCCL on GPUs; never the default group,
  which the learner ranks use for ZeRO/FSDP) over a ``TCPStore`` that the learner's rank 0 hosts:
  rank 0 is the root, rollout worker i is rank i + 1. The root broadcasts a JSON header (version,
  names, shapes, dtypes) and then the weights as flat byte buffers, one per dtype and bucket;
  every collective has a time-out (:class:`SyncTimeoutError`). HF workers copy into their
  parameters under the model lock; vLLM workers ``reload_weights``. A worker that restarted holds
  no group: the next sync builds a new one under a fresh store prefix (a new generation), and a
  restarted worker that must play before then is caught up over a two-rank group of its own.

vLLM workers reset the prefix cache after every load (without the reset they sample from stale
cached state). Every sync is stamped with the learner's version; every trajectory carries the
version that sampled it. After each sync the probe check makes each worker generate greedily
from a fixed prompt and compares its logprobs with the learner's forward pass of the same ids: a
worker that missed the sync, or loaded the wrong or half the weights, fails it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from datetime import timedelta
from typing import Any, Iterator, Mapping, Sequence

__all__ = ["SyncTimeoutError", "StaleWeightsError", "WeightSync", "BroadcastGroup", "BroadcastRoot", "timed_get",
           "timed_await"]

log = logging.getLogger(__name__)


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
    except SyncTimeoutError:  # a remote time-out (it is a TimeoutError too): keep its own message
        raise
    except asyncio.TimeoutError as exc:
        raise SyncTimeoutError(f"{what}: no answer within {timeout_s:.0f} s (a hung collective or a stuck actor)") from exc


def _is_timeout(exc: BaseException) -> bool:
    """Whether a c10d error is a time-out (gloo: "Operation timed out!", "Application timeout ...";
    the store: "wait timeout after ..."; NCCL's watchdog: "... timeout ...")."""
    msg = str(exc).lower()
    return "timed out" in msg or "timeout" in msg


class BroadcastGroup:
    """One member of a weight-sync process group: ranks ``0..size-1`` over ``store`` under
    ``prefix``, rank 0 the learner (root). Standalone (``ProcessGroupGloo``/``ProcessGroupNCCL``
    built directly, never registered as or beside the default group). Building it waits until
    every rank has joined; each collective waits at most ``timeout_s``. After any failure the
    group is unusable (gloo closes its pairs): build a new one under a new prefix."""

    def __init__(self, store: Any, prefix: str, rank: int, size: int, *, backend: str = "gloo",
                 timeout_s: float = 120.0, host: str = "127.0.0.1") -> None:
        import torch.distributed as dist

        self.prefix, self.rank, self.size, self.backend = prefix, rank, size, backend
        self.timeout_s, self.timeout = timeout_s, timedelta(seconds=timeout_s)
        self.device = "cuda" if backend == "nccl" else "cpu"
        pstore = dist.PrefixStore(prefix, store)
        try:
            if backend == "nccl":
                opts = dist.ProcessGroupNCCL.Options()
                opts._timeout = self.timeout
                self.pg = dist.ProcessGroupNCCL(pstore, rank, size, opts)  # connects on the first collective
            elif backend == "gloo":
                opts = dist.ProcessGroupGloo._Options()
                opts._timeout = self.timeout
                # the node's address, not the hostname's (which may resolve to 127.0.1.1)
                opts._devices = [dist.ProcessGroupGloo.create_device(hostname=host)]
                self.pg = dist.ProcessGroupGloo(pstore, rank, size, opts)
            else:
                raise ValueError(f"weight-sync backend must be 'gloo' or 'nccl', not {backend!r}")
        except Exception as exc:
            if _is_timeout(exc):
                raise SyncTimeoutError(f"weight-sync group {prefix}: rank {rank} of {size} waited {timeout_s:.0f} s "
                                       "for its peers to join (a rollout worker or the learner did not come)") from exc
            raise

    @classmethod
    def connect(cls, addr: tuple[str, int], prefix: str, rank: int, size: int, *, backend: str = "gloo",
                timeout_s: float = 120.0, host: str = "127.0.0.1") -> "BroadcastGroup":
        """Join as a non-root rank through the root's store at ``addr``."""
        import torch.distributed as dist

        try:
            store = dist.TCPStore(addr[0], addr[1], None, False, timedelta(seconds=timeout_s))
        except Exception as exc:
            if _is_timeout(exc):
                raise SyncTimeoutError(f"weight-sync store {addr[0]}:{addr[1]} did not answer in "
                                       f"{timeout_s:.0f} s") from exc
            raise
        return cls(store, prefix, rank, size, backend=backend, timeout_s=timeout_s, host=host)

    def _bcast(self, t: Any, what: str) -> None:
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        try:
            self.pg.broadcast([t], opts).wait(self.timeout)
        except Exception as exc:
            where = f"weight broadcast ({self.prefix}, rank {self.rank} of {self.size}): {what}"
            if _is_timeout(exc):
                raise SyncTimeoutError(f"{where} did not complete within {self.timeout_s:.0f} s "
                                       "(a hung or missing peer)") from exc
            raise RuntimeError(f"{where} failed ({exc}); a peer died? the next sync rebuilds the group") from exc

    def send(self, state: Mapping[str, Any], version: int, bucket_bytes: int) -> None:
        """Root: broadcast ``state`` (name -> tensor) stamped ``version``: the header, then one
        flat buffer per dtype and bucket, sent as bytes (any dtype goes over any backend)."""
        import torch

        buckets = _buckets(list(state.items()), bucket_bytes)
        header = {"version": int(version), "buckets": [
            {"dtype": str(b[0][1].dtype).removeprefix("torch."), "items": [[k, list(t.shape)] for k, t in b]}
            for b in buckets]}
        raw = torch.frombuffer(bytearray(json.dumps(header).encode()), dtype=torch.uint8)
        self._bcast(torch.tensor([raw.numel()], dtype=torch.int64, device=self.device), "the header length")
        self._bcast(raw.to(self.device), "the header")
        for i, b in enumerate(buckets):
            flat = torch.cat([t.detach().reshape(-1) for _, t in b]).to(self.device)
            if flat.numel():
                self._bcast(flat.view(torch.uint8), _what(i, len(buckets), flat))

    def recv(self) -> tuple[int, list[str], Iterator[tuple[str, Any]]]:
        """Non-root: the root's version, the names it sends, and an iterator of its ``(name,
        tensor)`` pairs that receives each bucket when it gets there, so a consumer that loads as
        it goes holds one bucket at a time, not a second copy of the model. Consume it whole (the
        root sends every bucket); stopping early breaks the group."""
        import torch

        n = torch.zeros(1, dtype=torch.int64, device=self.device)
        self._bcast(n, "the header length")
        raw = torch.empty(int(n.item()), dtype=torch.uint8, device=self.device)
        self._bcast(raw, "the header")
        header = json.loads(bytes(raw.cpu().numpy()).decode())
        buckets = header["buckets"]

        def items() -> Iterator[tuple[str, Any]]:
            for i, b in enumerate(buckets):
                sizes = [math.prod(shape) for _, shape in b["items"]]
                flat = torch.empty(sum(sizes), dtype=getattr(torch, b["dtype"]), device=self.device)
                if flat.numel():
                    self._bcast(flat.view(torch.uint8), _what(i, len(buckets), flat))
                yield from ((name, t.view(shape)) for (name, shape), t in zip(b["items"], flat.split(sizes)))

        return int(header["version"]), [name for b in buckets for name, _ in b["items"]], items()

    def close(self) -> None:
        """Drop the group (its connections close with it)."""
        pg, self.pg = getattr(self, "pg", None), None
        for name in ("shutdown", "abort"):  # NCCL frees its communicators; gloo closes its pairs
            fn = getattr(pg, name, None)
            if fn is not None:
                try:
                    fn()
                    break
                except Exception:  # a broken group may refuse: dropping the object is enough
                    pass


def _what(i: int, n: int, flat: Any) -> str:
    return f"bucket {i + 1}/{n} ({flat.dtype}, {flat.numel()} values)"


def _buckets(items: list[tuple[str, Any]], bucket_bytes: int) -> list[list[tuple[str, Any]]]:
    """Tensors grouped by dtype (state-dict order kept within a dtype), cut into buckets of at
    most ``bucket_bytes`` (a bigger tensor gets a bucket of its own)."""
    by_dtype: dict[Any, list[tuple[str, Any]]] = {}
    for k, t in items:
        by_dtype.setdefault(t.dtype, []).append((k, t))
    out: list[list[tuple[str, Any]]] = []
    for group in by_dtype.values():
        cur: list[tuple[str, Any]] = []
        size = 0
        for k, t in group:
            nb = t.numel() * t.element_size()
            if cur and size + nb > bucket_bytes:
                out.append(cur)
                cur, size = [], 0
            cur.append((k, t))
            size += nb
        if cur:
            out.append(cur)
    return out


class BroadcastRoot:
    """The learner's side (its rank 0): hosts the ``TCPStore`` (kept for the process's life; each
    group lives under its own prefix) and the groups it roots. The main group (every rollout
    worker) is replaced by the next main one; a catch-up group (one worker) is dropped after its
    one send."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.store: Any = None
        self.groups: dict[str, BroadcastGroup] = {}
        self.main: str | None = None

    def address(self, timeout_s: float = 120.0) -> tuple[str, int]:
        """The store's address (started on first use, on a free port)."""
        import torch.distributed as dist

        if self.store is None:
            self.store = dist.TCPStore(self.host, 0, None, True, timedelta(seconds=timeout_s), wait_for_workers=False)
        return self.host, int(self.store.port)

    def state(self) -> tuple[str, int, str | None]:
        """The store's address and the main group this root holds (None: none yet, or it failed)."""
        host, port = self.address()
        return host, port, self.main

    def join(self, prefix: str, size: int, backend: str, timeout_s: float, main: bool) -> None:
        """Build group ``prefix`` of ``size`` ranks as its root (waits until all have joined)."""
        self.address(timeout_s)
        group = BroadcastGroup(self.store, prefix, 0, size, backend=backend, timeout_s=timeout_s, host=self.host)
        if main:
            old = self.groups.pop(self.main, None) if self.main else None
            if old is not None:
                old.close()
            self.main = prefix
        self.groups[prefix] = group

    def send(self, prefix: str, state: Mapping[str, Any], version: int, bucket_bytes: int) -> None:
        """Broadcast ``state`` over group ``prefix``; a failed group (or a catch-up one) is dropped."""
        group = self.groups.get(prefix)
        if group is None:
            raise RuntimeError(f"no weight-sync group {prefix} on the learner (it restarted?): "
                               "the next sync rebuilds it")
        ok = False
        try:
            group.send(state, version, bucket_bytes)
            ok = True
        finally:
            if not ok or prefix != self.main:
                self.groups.pop(prefix, None)
                group.close()
                if prefix == self.main:
                    self.main = None


class WeightSync:
    """Pushes the learner group's weights to a :class:`~.workers.WorkerPool` and checks them.

    ``transport``: ``"object_store"`` or ``"broadcast"`` (see the module doc); ``backend``: the
    broadcast group's (``RayConfig.dist_backend``); ``bucket_mb``: the most bytes one broadcast
    moves. With ``broadcast`` the pool's restarted workers are caught up through :meth:`catch_up`.
    """

    def __init__(self, learners: Any, pool: Any, probe_ids: Sequence[int], *, timeout_s: float = 120.0,
                 probe_tol: float = 1e-5, probe_tokens: int = 8, transport: str = "object_store",
                 backend: str = "gloo", bucket_mb: float = 1024) -> None:
        if transport not in ("object_store", "broadcast"):
            raise ValueError(f"weight_transport must be 'object_store' or 'broadcast', not {transport!r}")
        self.learners, self.pool = learners, pool
        self.probe_ids = list(probe_ids)
        self.timeout_s, self.probe_tol, self.probe_tokens = timeout_s, probe_tol, probe_tokens
        self.last_probe_diff: float | None = None
        self.transport, self.backend = transport, backend
        self.bucket_bytes = max(1, int(bucket_mb * 2**20))
        self.last_push_s: float | None = None
        self.generation = 0  # broadcast: main groups built so far (each under a fresh store prefix)
        self._prefix: str | None = None  # the current main group's prefix (None: build one first)
        self._run = uuid.uuid4().hex[:8]  # several runs may share one learner store
        self.catch_ups = 0  # broadcast: restarted workers caught up between syncs
        self._lock: tuple[Any, asyncio.Lock] | None = None
        if transport == "broadcast":
            pool.catch_up = self.catch_up

    async def push(self, version: int) -> None:
        """Send the learner's current weights to every worker, stamped ``version``."""
        t = time.perf_counter()
        if self.transport == "broadcast":
            got = await self._push_broadcast(version)
        else:
            ref = await self.learners.state_dict_ref()
            self.pool.state_ref, self.pool.version = ref, version
            got = await timed_await([w.load_weights.remote(ref, version) for w in self.pool.workers], self.timeout_s,
                                    f"weight sync v{version} to {len(self.pool.workers)} rollout workers")
        if any(v != version for v in got):
            raise StaleWeightsError(f"weight sync v{version}: workers acknowledged {got}")
        self.last_push_s = time.perf_counter() - t

    # ---------------------------------------------------------------- broadcast transport

    def _guard(self) -> asyncio.Lock:
        """One broadcast at a time (a push and a catch-up share the root); one lock per event loop."""
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock[0] is not loop:
            self._lock = (loop, asyncio.Lock())
        return self._lock[1]

    async def _push_broadcast(self, version: int) -> list[int]:
        async with self._guard():
            self.pool.state_ref, self.pool.version = None, version
            try:
                return await self._broadcast_all(version)
            except (SyncTimeoutError, StaleWeightsError):
                self._prefix = None  # the group is broken: the next sync builds a new one
                raise
            except Exception as exc:  # a peer died or restarted mid-sync: rebuild once and retry
                self._prefix = None
                log.warning("weight broadcast v%d failed (%s: %s); rebuilding the group and retrying once", version,
                            type(exc).__name__, exc)
                try:
                    return await self._broadcast_all(version)
                except BaseException:
                    self._prefix = None
                    raise

    async def _broadcast_all(self, version: int) -> list[int]:
        prefix = await self._main_group()
        workers = self.pool.workers
        sent, got = await _gather_first_error(
            self.learners.wsync_send(prefix, self.bucket_bytes),
            timed_await([w.wsync_recv.remote(prefix) for w in workers], 2 * self.timeout_s + 10,
                        f"weight broadcast v{version} to {len(workers)} rollout workers"))
        if sent != version:
            raise StaleWeightsError(f"weight broadcast: the learner sent v{sent}, v{version} was expected")
        return list(got)

    async def _main_group(self) -> str:
        """The current main group's prefix, after building a new one if any member lacks it (a
        restarted worker, a failed sync, the first sync)."""
        workers = self.pool.workers
        host, port, root_main = await self.learners.wsync_store()
        held = await asyncio.gather(*(self.pool.call(i, "wsync_main") for i in range(len(workers))))
        if self._prefix is not None and root_main == self._prefix and all(h == self._prefix for h in held):
            return self._prefix
        self.generation += 1
        prefix = f"deepeyes-wsync/{self._run}/g{self.generation}"
        await self._build((host, port), prefix, list(range(len(workers))), main=True)
        self._prefix = prefix
        log.info("weight-sync group generation %d: learner + %d rollout workers (%s)", self.generation, len(workers),
                 self.backend)
        return prefix

    async def _build(self, addr: tuple[str, int], prefix: str, members: list[int], *, main: bool) -> None:
        size = len(members) + 1
        await _gather_first_error(
            self.learners.wsync_join(prefix, size, self.backend, self.timeout_s, main),
            timed_await([self.pool.workers[i].wsync_join.remote(addr, prefix, r + 1, size, self.backend, self.timeout_s,
                                                                main) for r, i in enumerate(members)],
                        2 * self.timeout_s + 10, f"weight-sync group {prefix}: {len(members)} rollout workers joining"))

    async def catch_up(self, i: int) -> int:
        """Give rollout worker ``i`` (back from a restart) the learner's current weights over a
        two-rank group of its own, without touching the others (in async mode they are mid-round
        on the previous version). Returns the version it now holds (the learner's)."""
        async with self._guard():
            self.catch_ups += 1
            prefix = f"deepeyes-wsync/{self._run}/c{self.catch_ups}"
            host, port, _ = await self.learners.wsync_store()  # also waits out an update in progress
            await self._build((host, port), prefix, [i], main=False)
            sent, (got,) = await _gather_first_error(
                self.learners.wsync_send(prefix, self.bucket_bytes),
                timed_await([self.pool.workers[i].wsync_recv.remote(prefix)], 2 * self.timeout_s + 10,
                            f"catching up rollout worker {i}"))
            if got != sent:
                raise StaleWeightsError(f"catch-up of rollout worker {i}: the learner sent v{sent}, it holds v{got}")
            return got

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


async def _gather_first_error(*aws: Any) -> list[Any]:
    """The results of all of ``aws`` (the peers of one collective). A failure other than a
    time-out (a peer died, a group is missing) is the cause, and the peers left waiting only time
    out because of it: raise it at once. Time-outs alone: raise one after all have ended."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    pending: set[asyncio.Future] = set(tasks)
    timed_out: BaseException | None = None
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            exc = t.exception()
            if exc is None:
                continue
            if not isinstance(exc, SyncTimeoutError):
                for p in pending:  # still running; their errors are consequences: retrieve, drop
                    p.add_done_callback(lambda f: f.cancelled() or f.exception())
                raise exc
            timed_out = timed_out or exc
    if timed_out is not None:
        raise timed_out
    return [t.result() for t in tasks]
