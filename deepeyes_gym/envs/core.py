"""DeepEyesEnv: one task (images + question) per episode, one assistant turn per step."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping, Sequence

import gymnasium as gym
import numpy as np

from PIL import Image

from .actions import Action, parse_action, sanitize_text
from .episode import Episode, Turn
from .image_cache import TaskImages, task_images
from .messages import render_messages, transcript
from .prompts import build_system_prompt, user_prompt
from .rewards import resolve_reward
from .spaces import TurnSpace, observation_space
from .task import Task, TaskImageError
from .tools import Tool, ToolContext, ToolError, ToolResult, make_tool, resize_returned_image
from .turns import (
    IMAGE_TOKEN,
    THINK_PREFILL,
    EnvDelta,
    Message,
    PolicyTurn,
    StopReason,
    clip_middle,
    clip_observation,
    neutralize_placeholders,
)

__all__ = ["DeepEyesEnv", "DEFAULT_TOOLS", "V1_TOOLS", "MAX_TOOL_IMAGES"]

log = logging.getLogger(__name__)

DEFAULT_TOOLS = ("python", "search", "image_search")  # DeepEyesV2
V1_TOOLS = ("image_zoom_in_tool", "image_rotate_tool")  # DeepEyes v1

MAX_TOOL_IMAGES = 10  # protocol: at most 10 images come back per turn
MAX_IMAGE_SIDE = 32768  # the observation space's bound on an image side
MIN_RETURNED_SIDE = 28  # an image downscaled below this (Qwen2.5-VL's patch merge) is dropped


def _readonly(a: np.ndarray) -> np.ndarray:
    """The env keeps one copy of each image and hands out that copy: nobody may change it."""
    a.setflags(write=False)
    return a


class DeepEyesEnv(gym.Env[dict, "str | PolicyTurn"]):
    """Agentic multimodal reasoning as a Gymnasium env.

    Observation: ``{"text": str, "images": tuple of H×W×3 uint8}``: at reset the first user turn
    (question, one ``<image>`` per input image), at each step the tool's observation. ``info["delta"]``
    (:class:`~deepeyes_gym.envs.turns.EnvDelta`) says exactly which messages the call added (reset:
    system + user; step: the user turn, or nothing once the episode ended) and the assistant
    prefill. Images are shared, read-only arrays.

    Action: the assistant turn as a ``str``, or a :class:`~deepeyes_gym.envs.turns.PolicyTurn`
    carrying its finish reason and sampled token count. A turn cut at the token limit
    (``finish_reason="length"``) runs no tool and ends the episode.

    Episode end (``info["stop_reason"]``): ``answer`` (terminated), ``max_turns``, ``max_chars``,
    ``max_tokens``, ``length``, ``abort`` (truncated). Budgets are checked before a tool runs, so
    the last permitted turn never runs a tool whose output nobody reads. The reward is paid on the
    final step; :meth:`episode_record` returns the one record of the episode.

    Args:
        tasks: a sequence of :class:`Task` (a finite suite), any object with ``__getitem__``
            and no ``__len__`` (an unbounded seeded stream), or None when every reset passes
            ``options={"task": task}`` (a trainer's sampler chooses the tasks).
        tools: tool names (see ``deepeyes_gym.envs.tools.available_tools()``) or Tool instances.
        tool_kwargs: constructor kwargs per tool name.
        reward: a preset name, a callable of the finished :class:`Episode`, or None ("realx").
        max_turns: assistant turns before truncation (DeepEyesV2: 9).
        max_chars / max_tokens: budgets over the policy's own text; ``token_counter`` counts tokens.
        max_obs_chars: observations longer than this keep their head and tail.
        max_image_pixels / max_turn_pixels / max_episode_pixels: budgets on the images tools
            return (per image, per turn, per episode); over budget they are downscaled (or
            dropped) with a note to the model, as ``max_pixels`` does in Qwen2.5-VL pipelines.
        shuffle: serve tasks in a seeded random order (else in index order).
        system_prompt: override the prompt built from the tools.
        copy_reset_images: give the reset observation its own copy of the input images
            (Gymnasium's rule: no two calls return shared memory). A token-level consumer that reads
            ``info["delta"]`` can pass False: the observation then holds the task's shared
            read-only arrays, and a 2000² image costs no 12 MB copy per sample.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(
        self,
        tasks: Sequence[Task] | Any | None = None,
        *,
        tools: Sequence[str | Tool] = DEFAULT_TOOLS,
        tool_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
        reward: str | Callable[[Episode], Any] | None = None,
        reward_kwargs: Mapping[str, Any] | None = None,
        max_turns: int = 9,
        max_chars: int | None = None,
        max_tokens: int | None = None,
        token_counter: Callable[[str], int] | None = None,
        max_obs_chars: int = 200_000,
        max_action_chars: int = 4_000_000,
        max_image_pixels: int | None = 4096 * 4096,
        max_turn_pixels: int | None = 4096 * 4096,
        max_episode_pixels: int | None = 2 * 4096 * 4096,
        shuffle: bool = True,
        system_prompt: str | None = None,
        render_mode: str | None = None,
        copy_reset_images: bool = True,
    ):
        if max_turns < 1:
            raise ValueError("max_turns must be >= 1")
        if render_mode not in (None, "ansi"):
            raise ValueError(f"unsupported render_mode {render_mode!r}")
        self.tasks = tasks
        self._finite = tasks is not None and hasattr(tasks, "__len__")
        if self._finite and len(tasks) == 0:
            raise ValueError("the task list is empty (pass tasks=None to give each reset options={'task': ...})")
        kwargs = dict(tool_kwargs or {})
        self.tools: dict[str, Tool] = {}
        for spec in tools:
            tool = spec if isinstance(spec, Tool) else make_tool(spec, **kwargs.get(spec, {}))
            if tool.name in self.tools:
                raise ValueError(f"tool {tool.name!r} given twice")
            self.tools[tool.name] = tool
        code_tools = [t for t in self.tools.values() if t.action_kind == "code"]
        if len(code_tools) > 1:
            raise ValueError("at most one code tool per env")
        self._code_tool = code_tools[0] if code_tools else None
        self.reward_fn = resolve_reward(reward, **dict(reward_kwargs or {}))
        self.max_turns = int(max_turns)
        self.max_chars = max_chars
        self.max_tokens = max_tokens
        self.token_counter = token_counter
        self.max_obs_chars = int(max_obs_chars)
        self.max_image_pixels = max_image_pixels
        self.max_turn_pixels = max_turn_pixels
        self.max_episode_pixels = max_episode_pixels
        self._max_side = MAX_IMAGE_SIDE
        self.shuffle = shuffle
        self.system_prompt = system_prompt or build_system_prompt(list(self.tools.values()))
        self.render_mode = render_mode
        self.copy_reset_images = copy_reset_images
        self.action_space = TurnSpace(max_action_chars)
        self.observation_space = observation_space(self.max_obs_chars, max_images=64, max_side=MAX_IMAGE_SIDE)
        self._episode: Episode | None = None
        self._reset_error: str | None = None
        self._aborted = False
        self._url_cache: dict[int, str] = {}
        self._episode_pixels = 0
        self._order: np.ndarray | None = None
        self._cursor = 0
        self._tool_ctx: ToolContext | None = None
        self._tool_start_errors: dict[str, str] = {}
        self._policy_chars = 0
        self._policy_tokens = 0

    # ------------------------------------------------------------------ task selection
    def _next_index(self, seeded: bool) -> int:
        if not self._finite:
            return int(self.np_random.integers(0, 2**62))
        n = len(self.tasks)
        if self._order is None or seeded or self._cursor >= n:
            self._order = self.np_random.permutation(n) if self.shuffle else np.arange(n)
            self._cursor = 0
        idx = int(self._order[self._cursor])
        self._cursor += 1
        return idx

    def _pick_task(self, seed: int | None, options: Mapping[str, Any]) -> tuple[Task, TaskImages, list]:
        """Return (task, its decoded images, skipped) — tasks whose images cannot be read are skipped."""
        if "task" in options:
            task = options["task"]
            if not isinstance(task, Task):
                raise TypeError(f"options['task'] must be a Task, not {type(task).__name__}")
            return task, task_images(task), []
        if self.tasks is None:
            raise ValueError("this env has no task list (tasks=None): pass reset(options={'task': task})")
        if "task_index" in options:
            task = self.tasks[int(options["task_index"])]
            return task, task_images(task), []  # an explicit pick reports a broken image
        if "task_id" in options:
            matches = [t for t in self.tasks if t.id == options["task_id"]] if self._finite else []
            if not matches:
                raise KeyError(f"no task with id {options['task_id']!r}")
            return matches[0], task_images(matches[0]), []
        skipped: list[tuple[str, str]] = []
        for attempt in range(16):
            task = self.tasks[self._next_index(seed is not None and attempt == 0)]
            try:
                return task, task_images(task), skipped
            except TaskImageError as exc:
                log.warning("skipping task %s: %s", task.id, exc)
                skipped.append((task.id, str(exc)))
        raise TaskImageError(f"16 tasks in a row had unreadable images: {skipped}")

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        # Whatever happens below, no earlier episode stays live: a failed reset leaves a clean env.
        self._end_tools()
        self._episode = None
        self._aborted = False
        try:
            task, decoded, skipped = self._pick_task(seed, options or {})
        except Exception as exc:
            self._reset_error = f"{type(exc).__name__}: {exc}"
            raise
        self._reset_error = None
        self._policy_chars = self._policy_tokens = self._episode_pixels = 0
        self._url_cache = {}
        public = task.public_info()
        public["family"] = task.metadata.get("family") if task.metadata else None
        # The G samples of a task share one decoded copy of its images (see image_cache).
        self._tool_ctx = ToolContext(task_id=task.id, images=list(decoded.pil), turn=0, public_info=public, task=task)
        self._tool_start_errors = {}
        for tool in self.tools.values():
            try:
                tool.start_episode(self._tool_ctx)
            except Exception as exc:  # a tool that cannot start is reported on use, not fatal
                log.warning("tool %s failed to start: %s", tool.name, exc)
                self._tool_start_errors[tool.name] = f"{type(exc).__name__}: {exc}"
        arrays = decoded.arrays  # shared by the task's samples, read-only
        question, _ = clip_middle(sanitize_text(task.prompt_text()), self.max_obs_chars)
        user = Message("user", user_prompt(neutralize_placeholders(question), len(arrays)), arrays)
        self._episode = Episode(task=task, system_prompt=self.system_prompt, prompt=user)
        # The observation gets its own copy: Gymnasium's contract is that no two calls return
        # shared memory (users keep what they were given); the record keeps the shared arrays.
        obs = {"text": user.text, "images": tuple(np.array(a) for a in arrays) if self.copy_reset_images else arrays}
        delta = EnvDelta((Message("system", self.system_prompt), user), THINK_PREFILL, None)
        info = dict(public, turn=0, skipped_tasks=skipped, delta=delta, stop_reason=None)
        return obs, info

    def step(self, action: str | PolicyTurn):
        ep = self._episode
        if ep is None or ep.done:
            return self._closed_step(ep)
        if isinstance(action, PolicyTurn):
            # A policy turn is the decoded text of sampled ids: keep it exactly (a NUL byte token
            # included), so the record decodes from the same ids the trainer trains on.
            text = sanitize_text(action.text, drop_nul=False)
            finish, n_tokens = action.finish_reason, action.n_tokens
        else:
            text, finish, n_tokens = sanitize_text(action), "stop", None
        if n_tokens is None and self.token_counter is not None:
            n_tokens = int(self.token_counter(text))
        if self.max_tokens is not None and n_tokens is None:
            raise ValueError("max_tokens needs the sampled count (PolicyTurn.n_tokens) or a token_counter")
        self._policy_chars += len(text)
        self._policy_tokens += n_tokens or 0
        parsed = parse_action(text)
        turn = Turn(action=text, kind=parsed.kind, finish_reason=finish, n_tokens=n_tokens)
        ep.turns.append(turn)
        assert self._tool_ctx is not None
        self._tool_ctx.turn = len(ep.turns)

        # Why the episode ends now, decided BEFORE any tool runs: a turn cut at the token limit
        # holds a half-written action, and a tool on the last permitted turn has no reader.
        if finish != "stop":
            reason: StopReason | None = finish  # "length" | "abort"
            turn.error = f"the turn ended with finish_reason={finish!r}; no action was taken"
        elif parsed.kind == "answer":
            ep.prediction = parsed.payload
            reason = "answer"
        else:
            reason = self._budget_exhausted()
        if reason is None:
            result = self._dispatch(parsed, turn)
            turn.observation, turn.observation_images = self._observation(result)
            if self._aborted:  # abort() ran while the tool did
                reason = "abort"
        if reason is None:
            msg = Message("user", turn.observation, turn.observation_images)
            obs = {"text": msg.text, "images": msg.images}
            delta = EnvDelta((msg,), THINK_PREFILL, None)
            return obs, 0.0, False, False, self._info(turn, delta)

        ep.stop_reason = reason
        ep.terminated = reason == "answer"
        ep.truncated = not ep.terminated
        info = self._info(turn, EnvDelta((), "", reason))
        reward = self._pay(info) if reason != "abort" else 0.0
        self._end_tools()
        return {"text": "", "images": ()}, reward, ep.terminated, ep.truncated, info

    def prewarm(self, n: int, wait: float | None = None) -> int:
        """Keep ``n`` code-sandbox workers ready for the coming resets (a rollout step's B × G);
        returns how many are ready (0 without a local code tool)."""
        tool = self._code_tool
        prewarm = getattr(tool, "prewarm", None)
        return int(prewarm(n, wait)) if prewarm is not None else 0

    def abort(self) -> None:
        """End the running episode now (safe from another thread): running tools are killed
        without waiting, the episode ends with ``stop_reason="abort"`` and no reward is paid.
        Dynamic sampling uses this to cancel surplus episodes."""
        self._aborted = True
        ep = self._episode
        for tool in self.tools.values():
            try:
                tool.abort()
            except Exception as exc:
                log.warning("tool %s failed to abort: %s", tool.name, exc)
        if ep is not None and not ep.done:
            ep.stop_reason, ep.truncated = "abort", True

    def render(self) -> str | None:
        if self.render_mode != "ansi" or self._episode is None:
            return None
        return transcript(self._episode.messages())

    def close(self) -> None:
        self._end_tools()
        for tool in self.tools.values():
            try:
                tool.close()
            except Exception as exc:
                log.warning("tool %s failed to close: %s", tool.name, exc)
        super().close()

    # ------------------------------------------------------------------ the record
    @property
    def episode(self) -> Episode | None:
        """The current (or last) episode; see :meth:`episode_record`."""
        return self._episode

    def episode_record(self) -> Episode | None:
        """The one record of the current (or last) episode: every turn with its observation text
        and images, the prompt, the reward breakdown and the stop reason. Through wrappers:
        ``env.get_wrapper_attr("episode_record")()``. Save it with
        :func:`deepeyes_gym.envs.episode_io.save_episode`."""
        return self._episode

    def messages(self, image_format: str = "pil") -> list[dict[str, Any]]:
        """The conversation so far as OpenAI-style chat messages (see ``render_messages``)."""
        if self._episode is None:
            return []
        return render_messages(self._episode.messages(), image_format, self._url_cache)

    # ------------------------------------------------------------------ helpers
    def _closed_step(self, ep: Episode | None):
        """A step with no running episode: an error observation, never an exception."""
        if ep is None:
            why = f"the last reset failed ({self._reset_error})" if self._reset_error else "reset() was not called"
            text = f"Error: no episode is running: {why}; call reset()."
            return {"text": text, "images": ()}, 0.0, False, True, {"turn": 0, "error": text, "stop_reason": "error",
                                                                   "delta": EnvDelta((), "", "error")}
        text = "Error: the episode is over; call reset()."
        info = self._info(None, EnvDelta((), "", ep.stop_reason))
        info["error"] = text
        return {"text": text, "images": ()}, 0.0, ep.terminated, ep.truncated, info

    def _dispatch(self, parsed: Action, turn: Turn) -> ToolResult:
        if parsed.kind == "invalid":
            turn.error = parsed.error
            return ToolResult(parsed.error or "Error: invalid action.", error=parsed.error)
        if parsed.kind == "code":
            tool = self._code_tool
            if tool is None:
                msg = "Error: code execution is not available here. " + self._available()
                turn.error = msg
                return ToolResult(msg, error=msg)
        else:
            tool = self.tools.get(parsed.name or "")
            if tool is None or tool.action_kind != "tool_call":
                msg = f"Error: unknown tool '{parsed.name}'. " + self._available()
                turn.error = msg
                return ToolResult(msg, error=msg)
        turn.tool = tool.name
        if tool.name in self._tool_start_errors:
            msg = f"Error: the tool '{tool.name}' is unavailable: {self._tool_start_errors[tool.name]}"
            turn.error = msg
            return ToolResult(msg, error=msg)
        try:
            args = tool.parse(parsed.payload)
        except ToolError as exc:
            turn.error = f"Error: {exc}"
            return ToolResult(turn.error, error=turn.error)
        turn.arguments = args
        start = time.perf_counter()
        try:
            result = tool.execute(args, self._tool_ctx)
        except ToolError as exc:
            result = ToolResult(f"Error: {exc}", error=str(exc))
        except Exception as exc:  # a tool bug must not end the episode
            log.exception("tool %s raised", tool.name)
            msg = f"Error: the tool '{tool.name}' failed: {type(exc).__name__}: {exc}"
            result = ToolResult(msg, error=msg)
        turn.latency_s = time.perf_counter() - start
        turn.error = result.error
        turn.metadata = dict(result.metadata)
        return result

    def _available(self) -> str:
        names = [f"<tool_call> {n}" for n, t in self.tools.items() if t.action_kind == "tool_call"]
        if self._code_tool is not None:
            names.insert(0, "<code> (Python)")
        return "Available actions: " + ", ".join(names + ["<answer>"]) + "."

    def _observation(self, result: ToolResult) -> tuple[str, tuple[np.ndarray, ...]]:
        """The observation text and images for a tool result, with the placeholder invariant
        (one ``<image>`` per image, in order) holding after every fix-up and clip."""
        notes: list[str] = []
        arrays: list[np.ndarray] = []
        for im in list(result.images)[:MAX_TOOL_IMAGES]:
            try:
                arrays.append(resize_returned_image(im, self.max_image_pixels, self._max_side))
            except Exception as exc:
                log.warning("dropping an image the tool returned: %s", exc)
                notes.append(f"[an image could not be returned: {type(exc).__name__}]")
        if len(result.images) > MAX_TOOL_IMAGES:
            notes.append(f"[{len(result.images) - MAX_TOOL_IMAGES} more images were not returned: "
                         f"at most {MAX_TOOL_IMAGES} per turn]")
        arrays = self._fit_pixel_budget(arrays, notes)
        text = sanitize_text(result.text)
        if text.count(IMAGE_TOKEN) != len(arrays):
            # Keep the invariant "one placeholder per image" even if a tool echoed "<image>".
            text = neutralize_placeholders(text) + ("\n" + IMAGE_TOKEN * len(arrays) if arrays else "")
        if notes:
            text += "\n" + "\n".join(notes)
        return clip_observation(text, self.max_obs_chars), tuple(_readonly(a) for a in arrays)

    def _fit_pixel_budget(self, arrays: list[np.ndarray], notes: list[str]) -> list[np.ndarray]:
        """Downscale (or, past the episode's budget, drop) returned images so one turn stays within
        ``max_turn_pixels`` and the episode within ``max_episode_pixels``, telling the model so."""
        if not arrays:
            return arrays
        budget = self.max_turn_pixels
        if self.max_episode_pixels is not None:
            left = max(0, self.max_episode_pixels - self._episode_pixels)
            budget = left if budget is None else min(budget, left)
        total = sum(a.shape[0] * a.shape[1] for a in arrays)
        if budget is not None and total > budget:
            scale = (budget / total) ** 0.5
            kept = []
            for a in arrays:
                h, w = int(a.shape[0] * scale), int(a.shape[1] * scale)
                if min(h, w) >= MIN_RETURNED_SIDE:
                    kept.append(np.asarray(Image.fromarray(a).resize((w, h), Image.BICUBIC)))
            dropped = len(arrays) - len(kept)
            what = "this turn" if budget == self.max_turn_pixels else "this episode"
            notes.append(f"[the returned images were downscaled by {scale:.2f} to fit the image budget of {what}"
                         + (f"; {dropped} did not fit and were not returned]" if dropped else "]"))
            arrays = kept
        self._episode_pixels += sum(a.shape[0] * a.shape[1] for a in arrays)
        return arrays

    def _budget_exhausted(self) -> StopReason | None:
        if len(self._episode.turns) >= self.max_turns:
            return "max_turns"
        if self.max_chars is not None and self._policy_chars >= self.max_chars:
            return "max_chars"
        if self.max_tokens is not None and self._policy_tokens >= self.max_tokens:
            return "max_tokens"
        return None

    def _info(self, turn: Turn | None, delta: EnvDelta) -> dict[str, Any]:
        return {
            "turn": len(self._episode.turns) if self._episode else 0,
            "action_kind": turn.kind if turn else None,
            "tool": turn.tool if turn else None,
            "tool_latency_s": turn.latency_s if turn else 0.0,
            "error": turn.error if turn else None,
            "n_images": turn.n_images if turn else 0,
            "delta": delta,
            "stop_reason": delta.stop_reason,
        }

    def _pay(self, info: dict[str, Any]) -> float:
        ep = self._episode
        try:
            result = self.reward_fn(ep)
            value, breakdown = float(result.value), dict(result.breakdown)
        except Exception as exc:  # a broken user reward is reported, the episode still ends
            log.exception("reward function failed")
            value, breakdown = 0.0, {"reward_error": f"{type(exc).__name__}: {exc}"}
        info.update(
            accuracy=float(breakdown.get("accuracy", 0.0)),
            format_ok=bool(breakdown.get("format_ok", False)),
            format_reasons=list(breakdown.get("format_reasons", [])),
            prediction=ep.prediction,
            ground_truth=ep.task.answer,
            reward_breakdown=breakdown,
        )
        ep.reward, ep.reward_breakdown = value, breakdown
        return value

    def _end_tools(self) -> None:
        if self._tool_ctx is None:
            return
        for tool in self.tools.values():
            try:
                tool.end_episode()
            except Exception as exc:
                log.warning("tool %s failed to end its episode: %s", tool.name, exc)
        self._tool_ctx = None
