"""The multi-turn rollout engine: B tasks x G samples through envs, token in / token out.

Each episode is its own coroutine (the shape of :mod:`.loop`): it waits only for its own
generation and its own env step, so one episode's tool call overlaps the generation of the
others and nothing waits on a batch barrier. Env calls and rendering (image processing is CPU
work) run in a dedicated thread pool sized to the concurrency, never on the event loop.

The ids are built once and appended, never re-rendered: prompt = initial render; each turn
appends the sampled ids (mask 1, sampling logprobs) and the rendered env delta (mask 0). The
invariants that make those ids trainable are checked at run time on every episode, without
tolerance; a violation fails that episode (``Trajectory.error``), as does a policy error, an env
error, a time-out or an abort. Other episodes are not affected.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np

from ..envs.turns import PolicyTurn
from .generation import Generation, SamplingParams, TokenPolicy
from .loop import env_executor
from .render.base import RenderInvariantError, Rendered, check_prefix, check_transcript, concat_mm_inputs
from .trajectory import Trajectory, TurnStats

__all__ = ["RolloutEngine", "RolloutRun", "episode_seed", "mismatch_report"]

log = logging.getLogger(__name__)

EnvFactory = Callable[[], Any]


def episode_seed(seed: int, task_index: int, sample: int) -> int:
    """The episode's seed from (run seed, task index, sample): independent streams per episode,
    the same whatever order episodes happen to run in."""
    return int(np.random.SeedSequence([seed, task_index, sample]).generate_state(1)[0] & 0x7FFFFFFF)


def _turn_seed(ep_seed: int, turn: int) -> int:
    return int(np.random.SeedSequence([ep_seed, turn]).generate_state(1)[0] & 0x7FFFFFFF)


class _EpisodeError(Exception):
    """Ends one episode with this message in ``Trajectory.error``."""


@dataclass
class _Group:
    """Shared by the samples of one task: the first initial render, reused by the others when
    their reset delta is the same (it is, unless the env randomises the prompt): G samples of a
    task then pay the image processing once."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    rendered: tuple[Any, Rendered] | None = None  # (reset delta, its render)


@dataclass
class _Job:
    task: Any
    task_index: int
    sample: int
    seed: int
    group: _Group = field(default_factory=_Group)

    @property
    def uid(self) -> str:
        return f"{self.task.id}:{self.sample}"


@dataclass
class _State:
    """What cancellation needs to know about a running episode."""

    aborted: bool = False
    env: Any = None
    inflight: Future | None = None  # the env call running in the pool (threads cannot be cancelled)


@dataclass
class _Span:
    kind: str  # "gen" | "tool" (env.step) | "reset" (env.reset) | "render"
    uid: str
    start: float
    end: float


class RolloutEngine:
    """Collects trajectories with a token-level policy.

    ``envs``: a factory making one Gymnasium env built on ``DeepEyesEnv`` (one is made per
    concurrent slot, lazily, and reused across episodes), or a list of such envs (the
    concurrency is then at most its length). Each episode resets its env with
    ``options={"task": task}`` and a seed from :func:`episode_seed`. ``sampling.max_tokens`` caps
    one turn; ``max_response_tokens`` bounds the whole episode: a turn samples at most what is left of it (tool
    output and template ids count against it too); a turn with nothing left ends the episode as
    ``"length"`` without a call to the policy. ``episode_timeout_s`` bounds one episode's wall
    time (waiting for an env slot excluded). ``policy.generate`` gets ``mm_inputs`` (the
    episode's processed images so far) when it accepts that keyword, so images are processed once.
    """

    def __init__(self, envs: EnvFactory | Sequence[Any], policy: TokenPolicy, renderer: Any, *,
                 max_concurrency: int = 64, max_response_tokens: int = 4096,
                 sampling: SamplingParams | None = None, episode_timeout_s: float | None = None,
                 weight_version: int = 0, abort_grace_s: float = 30.0, record_spans: bool = False) -> None:
        if max_response_tokens < 1 or max_concurrency < 1:
            raise ValueError("max_response_tokens and max_concurrency must be >= 1")
        self._factory: EnvFactory | None = envs if callable(envs) else None
        self._idle: list[Any] = [] if callable(envs) else list(envs)
        if self._factory is None and not self._idle:
            raise ValueError("envs: give a factory or at least one env")
        self.concurrency = max_concurrency if self._factory else min(max_concurrency, len(self._idle))
        self.policy, self.renderer = policy, renderer
        self.max_response_tokens = max_response_tokens
        self.sampling = sampling or SamplingParams()
        self.episode_timeout_s = episode_timeout_s
        self.weight_version = weight_version
        self.abort_grace_s = abort_grace_s
        # Twice the slots: an abort must not queue behind the stuck step it is meant to end.
        self._executor = env_executor(2 * self.concurrency)
        self._accepts_mm = "mm_inputs" in inspect.signature(policy.generate).parameters
        self._runs: set[RolloutRun] = set()
        self.record_spans = record_spans
        self.spans: list[_Span] = []  # generation and tool intervals (benchmarks), when recorded

    # ------------------------------------------------------------------ public API

    def start(self, tasks: Sequence[Any], n_samples: int, *, seed: int = 0,
              on_trajectory: Callable[[Trajectory], None] | None = None) -> "RolloutRun":
        """Start ``len(tasks) * n_samples`` episodes now (inside a running event loop) and return
        the handle: iterate it for trajectories as they finish, ``abort(uid)`` one, ``cancel()``
        the rest (dynamic sampling)."""
        groups = [_Group() for _ in tasks]
        jobs = [_Job(t, i, s, episode_seed(seed, i, s), groups[i]) for i, t in enumerate(tasks) for s in range(n_samples)]
        if len({j.uid for j in jobs}) != len(jobs):
            raise ValueError("task ids must be unique within one collect")
        return RolloutRun(self, jobs, on_trajectory)

    async def collect(self, tasks: Sequence[Any], n_samples: int, *, seed: int = 0,
                      on_trajectory: Callable[[Trajectory], None] | None = None) -> list[Trajectory]:
        """Play every episode; one trajectory per (task, sample), in task-major order."""
        return await self.start(tasks, n_samples, seed=seed, on_trajectory=on_trajectory).wait()

    def abort(self, uid: str) -> bool:
        """Abort the running episode ``uid`` (it ends with ``error="aborted"``); False if unknown."""
        return any(run.abort(uid) for run in list(self._runs))

    def close(self) -> None:
        """Close the engine's envs and its thread pool (not the policy)."""
        for env in self._idle:
            try:
                env.close()
            except Exception as exc:
                log.warning("env close failed: %s", exc)
        self._idle.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ one episode

    async def _run_episode(self, job: _Job, state: _State, slots: asyncio.Semaphore) -> Trajectory:
        traj = Trajectory(uid=job.uid, group=str(job.task.id), sample=job.sample, seed=job.seed,
                          weight_version=self.weight_version)
        try:
            await slots.acquire()
        except asyncio.CancelledError:
            if not state.aborted:
                raise
            return self._aborted(traj)
        t0 = time.perf_counter()
        finished = False
        try:
            state.env = await self._take_env()
            await asyncio.wait_for(self._play(state.env, job, traj, state), self.episode_timeout_s)
            finished = traj.error is None
        except asyncio.TimeoutError:
            traj.error = f"the episode timed out after {self.episode_timeout_s} s"
        except asyncio.CancelledError:
            if not state.aborted:
                await self._release(state, clean=False)
                slots.release()
                raise
            self._aborted(traj)
        except _EpisodeError as exc:
            traj.error = str(exc)
        except Exception as exc:  # an engine bug: fails this episode, logged loudly
            log.exception("rollout episode %s crashed", job.uid)
            traj.error = f"engine error: {type(exc).__name__}: {exc}"
        traj.wall_s = time.perf_counter() - t0
        try:
            await self._release(state, clean=finished)
        finally:
            slots.release()
        return traj

    @staticmethod
    def _aborted(traj: Trajectory) -> Trajectory:
        traj.error, traj.stop_reason = "aborted", "abort"
        task = asyncio.current_task()
        if task is not None and hasattr(task, "uncancel"):
            task.uncancel()  # handled here: the episode returns its (aborted) trajectory
        return traj

    async def _take_env(self) -> Any:
        if self._idle:
            return self._idle.pop()
        if self._factory is None:
            raise _EpisodeError("no env left in the pool (a stuck env was dropped)")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._factory)

    async def _release(self, state: _State, *, clean: bool) -> None:
        """Give the env back. After a failure: abort its episode (kills a running tool) and wait for
        the step still running in its thread, so the next episode never shares the env with it."""
        env, state.env = state.env, None
        if env is None:
            return
        if not clean:
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(self._executor, env.get_wrapper_attr("abort"))
            except Exception as exc:
                log.warning("env.abort failed: %s", exc)
            if state.inflight is not None and not state.inflight.done():
                done, _ = await asyncio.wait([asyncio.wrap_future(state.inflight)], timeout=self.abort_grace_s)
                if not done:  # stuck in a thread we cannot stop: never reuse it
                    log.error("an env step did not end %.0f s after abort; dropping the env", self.abort_grace_s)
                    return
        self._idle.append(env)

    async def _env_call(self, state: _State, fn: Callable[[], Any]) -> Any:
        fut = self._executor.submit(fn)
        state.inflight = fut
        try:
            return await asyncio.wrap_future(fut)
        finally:
            if fut.done():
                state.inflight = None

    def _span(self, kind: str, uid: str, start: float) -> None:
        if self.record_spans:  # list.append is atomic: safe from the pool's threads
            self.spans.append(_Span(kind, uid, start, time.perf_counter()))

    def _step_render(self, env: Any, job: _Job, turn: PolicyTurn, after_eos: bool,
                     pixels_used: int) -> tuple[float, Any, Rendered]:
        t = time.perf_counter()
        _, reward, _, _, info = env.step(turn)
        self._span("tool", job.uid, t)
        t = time.perf_counter()
        out = self.renderer.render_delta(info["delta"], after_eos=after_eos, pixels_used=pixels_used)
        self._span("render", job.uid, t)
        return float(reward), info, out

    def _reset_render(self, env: Any, job: _Job) -> tuple[Any, Rendered]:
        t = time.perf_counter()
        _, info = env.reset(seed=job.seed, options={"task": job.task})
        self._span("reset", job.uid, t)
        t = time.perf_counter()
        delta, group = info["delta"], job.group
        with group.lock:  # the group's other samples wait for this render instead of redoing it
            if group.rendered is not None and _same_delta(group.rendered[0], delta):
                first = group.rendered[1]
                out = Rendered(list(first.ids), first.images, first.image_token_counts, first.pixel_values, first.image_grid_thw)
            else:
                out = self.renderer.render_initial(delta)
                group.rendered = (delta, out)
        self._span("render", job.uid, t)
        return info, out

    async def _play(self, env: Any, job: _Job, traj: Trajectory, state: _State) -> None:
        try:
            info, first = await self._env_call(state, partial(self._reset_render, env, job))
        except RenderInvariantError as exc:
            raise _EpisodeError(f"invariant broken in the initial render: {exc}") from exc
        except Exception as exc:
            raise _EpisodeError(f"env reset failed: {type(exc).__name__}: {exc}") from exc
        parts, prefill = [first], info["delta"].prefill
        prompt = list(first.ids)
        traj.prompt_ids = list(first.ids)
        gen_stats: list[tuple[int, str, float]] = []
        pixels = first.pixels
        while True:
            gen, gen_s = await self._generate(job, traj, prompt, parts, len(gen_stats))
            sampled = list(gen.token_ids or [])
            gen_stats.append((len(sampled), gen.finish_reason, gen_s))
            traj.response_ids += sampled
            traj.response_mask += [1] * len(sampled)
            traj.logprobs += [float(x) for x in (gen.logprobs or [])]
            turn = PolicyTurn(prefill + gen.text, gen.finish_reason, len(sampled))
            after_eos = bool(sampled) and sampled[-1] == self.renderer.eos_token_id
            try:
                reward, info, delta = await self._env_call(state, partial(self._step_render, env, job, turn, after_eos, pixels))
            except RenderInvariantError as exc:
                raise _EpisodeError(f"invariant broken rendering the env delta: {exc}") from exc
            except Exception as exc:
                raise _EpisodeError(f"env step failed: {type(exc).__name__}: {exc}") from exc
            traj.response_ids += delta.ids
            traj.response_mask += [0] * len(delta.ids)
            traj.logprobs += [0.0] * len(delta.ids)
            nxt = prompt + sampled + delta.ids
            try:
                # The trajectory (kept apart from the prompts) must be the prompt that was sent
                # plus what was appended, id for id, and one logprob and mask bit per id.
                check_prefix(prompt, sampled, delta.ids, traj.prompt_ids + traj.response_ids)
                if not len(traj.response_ids) == len(traj.response_mask) == len(traj.logprobs):
                    raise RenderInvariantError("response ids, mask and logprobs differ in length")
            except RenderInvariantError as exc:
                raise _EpisodeError(f"invariant broken: {exc}") from exc
            prompt, pixels = nxt, pixels + delta.pixels
            parts.append(delta)
            prefill = info["delta"].prefill
            if info["delta"].done:
                # The final checks decode and concatenate the whole episode: off the event loop,
                # which must stay free to feed the other episodes' generations.
                await self._env_call(state, partial(self._finish, env, traj, reward, parts, gen_stats))
                return

    async def _generate(self, job: _Job, traj: Trajectory, prompt: list[int], parts: list[Rendered],
                        turn: int) -> tuple[Generation, float]:
        left = self.max_response_tokens - len(traj.response_ids)
        if left <= 0:  # nothing left to sample: the env ends the episode as "length"
            return Generation("", "length", None, [], [], len(prompt)), 0.0
        # A turn samples at most the per-turn cap and what is left of the episode's budget.
        sampling = replace(self.sampling, max_tokens=min(self.sampling.max_tokens, left), seed=_turn_seed(job.seed, turn))
        kwargs = {"mm_inputs": concat_mm_inputs([p.mm_inputs for p in parts])} if self._accepts_mm else {}
        images = [im for p in parts for im in p.images]
        t = time.perf_counter()
        try:
            gen = await self.policy.generate(list(prompt), images, sampling, request_id=f"{job.uid}#{turn}", **kwargs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise _EpisodeError(f"policy error: {type(exc).__name__}: {exc}") from exc
        end = time.perf_counter()
        self._span("gen", job.uid, t)
        if gen.token_ids is None:
            raise _EpisodeError("policy error: the backend returned no token ids")
        if sampling.logprobs and gen.logprobs is None:
            raise _EpisodeError("policy error: the backend returned no logprobs")
        if len(gen.token_ids) > sampling.max_tokens:
            raise _EpisodeError(f"policy error: {len(gen.token_ids)} tokens sampled, {sampling.max_tokens} allowed")
        if gen.prompt_tokens is not None and gen.prompt_tokens != len(prompt):
            raise _EpisodeError(f"invariant broken: the backend saw {gen.prompt_tokens} prompt ids, {len(prompt)} were sent")
        if gen.logprobs is None:
            gen.logprobs = [0.0] * len(gen.token_ids)
        return gen, end - t

    def _finish(self, env: Any, traj: Trajectory, reward: float, parts: list[Rendered],
                gen_stats: list[tuple[int, str, float]]) -> None:
        record = env.get_wrapper_attr("episode_record")()
        mm = concat_mm_inputs([p.mm_inputs for p in parts])
        traj.images = [im for p in parts for im in p.images]
        traj.pixel_values, traj.image_grid_thw = mm.get("pixel_values"), mm.get("image_grid_thw")
        traj.reward = reward
        traj.reward_breakdown = dict(record.reward_breakdown)
        traj.accuracy = float(traj.reward_breakdown.get("accuracy", 0.0))
        traj.stop_reason = record.stop_reason
        if len(record.turns) != len(gen_stats):
            raise _EpisodeError(f"invariant broken: the env recorded {len(record.turns)} turns, {len(gen_stats)} were sampled")
        traj.turns = [
            TurnStats(n_tokens=n, finish_reason=t.finish_reason, gen_s=g, tool=t.tool, latency_s=t.latency_s,
                      n_images=t.n_images, error=t.error)
            for (n, _, g), t in zip(gen_stats, record.turns)
        ]
        ids = traj.input_ids
        try:
            self.renderer.check_image_tokens(ids, traj.image_grid_thw)
            if traj.pixel_values is not None and traj.pixel_values.shape[0] != int(traj.image_grid_thw.prod(-1).sum()):
                raise RenderInvariantError("pixel_values rows do not match image_grid_thw")
            check_transcript(self.renderer.decode(ids), self.renderer.transcript(record.messages()))
        except RenderInvariantError as exc:
            raise _EpisodeError(f"invariant broken: {exc}") from exc
        if record.stop_reason == "abort":
            traj.error = "the backend aborted the generation"


def _same_delta(a: Any, b: Any) -> bool:
    """Same messages, texts and image pixels (so the same render), compared exactly."""
    if a.prefill != b.prefill or len(a.messages) != len(b.messages):
        return False
    for m, n in zip(a.messages, b.messages):
        if m.role != n.role or m.text != n.text or len(m.images) != len(n.images):
            return False
        if any(x.shape != y.shape or not np.array_equal(x, y) for x, y in zip(m.images, n.images)):
            return False
    return True


class RolloutRun:
    """A started collection. Every episode yields exactly one trajectory: iterate (``async for``)
    to get them as they finish, ``await wait()`` for all of them in task-major order. ``abort``
    and ``cancel`` end episodes early (their env's episode is aborted, running tools killed); an
    aborted episode's trajectory has ``error="aborted"``."""

    def __init__(self, engine: RolloutEngine, jobs: list[_Job], on_trajectory: Callable[[Trajectory], None] | None) -> None:
        self.engine, self.jobs = engine, jobs
        self._on = on_trajectory
        self._queue: asyncio.Queue[Trajectory] = asyncio.Queue()
        self._yielded = 0
        slots = asyncio.Semaphore(engine.concurrency)
        self._states = {j.uid: _State() for j in jobs}
        self._tasks: dict[str, asyncio.Task] = {}
        for j in jobs:
            task = asyncio.create_task(engine._run_episode(j, self._states[j.uid], slots), name=f"rollout {j.uid}")
            task.add_done_callback(partial(self._done, j))
            self._tasks[j.uid] = task
        engine._runs.add(self)

    def _done(self, job: _Job, task: asyncio.Task) -> None:
        if task.cancelled():  # cancelled from outside the run (not by abort/cancel): nothing to yield
            return
        exc = task.exception()  # _run_episode turns failures into traj.error; this is the last net
        traj = task.result() if exc is None else Trajectory(
            uid=job.uid, group=str(job.task.id), sample=job.sample, seed=job.seed,
            error=f"engine error: {type(exc).__name__}: {exc}")
        self._queue.put_nowait(traj)
        if all(t.done() for t in self._tasks.values()):
            self.engine._runs.discard(self)
        if self._on is not None:
            try:
                self._on(traj)
            except Exception:
                log.exception("on_trajectory callback failed")

    def __aiter__(self) -> "RolloutRun":
        return self

    async def __anext__(self) -> Trajectory:
        if self._yielded >= len(self.jobs):
            raise StopAsyncIteration
        traj = await self._queue.get()
        self._yielded += 1
        return traj

    @property
    def pending(self) -> list[str]:
        """Uids of the episodes not finished yet."""
        return [uid for uid, t in self._tasks.items() if not t.done()]

    def abort(self, uid: str) -> bool:
        task = self._tasks.get(uid)
        if task is None or task.done():
            return False
        self._states[uid].aborted = True
        task.cancel()
        return True

    async def cancel(self) -> list[Trajectory]:
        """Abort every unfinished episode and wait until their envs are released; returns their
        (aborted) trajectories."""
        uids = [uid for uid in self.pending if self.abort(uid)]
        await asyncio.gather(*(self._tasks[u] for u in uids), return_exceptions=True)
        return [self._tasks[u].result() for u in uids if not self._tasks[u].cancelled()]

    async def wait(self) -> list[Trajectory]:
        """Every trajectory, in task-major order (cancelling the waiter aborts the episodes)."""
        try:
            await asyncio.gather(*self._tasks.values())
        except asyncio.CancelledError:
            await self.cancel()
            raise
        return [self._tasks[j.uid].result() for j in self.jobs]  # raises a BaseException an episode raised


def mismatch_report(model: Any, trajectories: Sequence[Trajectory]) -> dict[str, float]:
    """Recompute each usable trajectory's logprobs with the training forward pass
    (:func:`~deepeyes_gym.agents.hf.sequence_logprobs`) and compare with the sampling logprobs
    on sampled tokens: mean and max ``|Δlogp|`` and the k3 KL estimate over all of them, plus
    the worst trajectory's uid. Trajectories with an error are skipped (counted)."""
    import torch

    from .hf import logprob_mismatch, sequence_logprobs

    n = 0
    sum_abs = sum_k3 = 0.0
    worst, worst_uid = 0.0, None
    skipped = 0
    for t in trajectories:
        if t.error is not None:
            skipped += 1
            continue
        ids = torch.tensor(t.input_ids)
        mask = torch.tensor([0] * len(t.prompt_ids) + list(t.response_mask))
        roll = torch.tensor([0.0] * len(t.prompt_ids) + list(t.logprobs), dtype=torch.float64)
        with torch.no_grad():
            train = sequence_logprobs(model, ids, t.mm_inputs or None, mask)
        m = logprob_mismatch(roll, train, mask)
        n += m["n_tokens"]
        sum_abs += m["mean_abs"] * m["n_tokens"]
        sum_k3 += m["kl_k3"] * m["n_tokens"]
        if m["max_abs"] >= worst and m["n_tokens"]:
            worst, worst_uid = m["max_abs"], t.uid
    return {
        "n_tokens": n, "n_trajectories": len(trajectories) - skipped, "skipped": skipped,
        "mean_abs": sum_abs / n if n else 0.0, "max_abs": worst, "kl_k3": sum_k3 / n if n else 0.0,
        "worst_uid": worst_uid,
    }
