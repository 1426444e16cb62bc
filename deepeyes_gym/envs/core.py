"""DeepEyesEnv: one task (images + question) per episode, one assistant turn per step."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping, Sequence

import gymnasium as gym
import numpy as np

from .actions import Action, parse_action, sanitize_text
from .episode import Episode, Turn
from .messages import Conversation
from .prompts import build_system_prompt, user_prompt
from .rewards import resolve_reward
from .spaces import UnicodeText, as_image_tuple, observation_space
from .task import Task, TaskImageError
from .tools import Tool, ToolContext, ToolError, ToolResult, make_tool, resize_returned_image

__all__ = ["DeepEyesEnv", "DEFAULT_TOOLS", "V1_TOOLS"]

log = logging.getLogger(__name__)

DEFAULT_TOOLS = ("python", "search", "image_search")  # DeepEyesV2
V1_TOOLS = ("image_zoom_in_tool", "image_rotate_tool")  # DeepEyes v1

IMAGE_TOKEN = "<image>"
_NEUTRAL_IMAGE = "[image]"  # what a stray "<image>" in tool text becomes
MAX_TOOL_IMAGES = 10


class DeepEyesEnv(gym.Env[dict, str]):
    """Agentic multimodal reasoning as a Gymnasium env.

    Args:
        tasks: a sequence of :class:`Task` (a finite suite), or any object with ``__getitem__``
            and no ``__len__`` (an unbounded seeded stream).
        tools: tool names (see ``deepeyes_gym.envs.tools.available_tools()``) or Tool instances.
        tool_kwargs: constructor kwargs per tool name.
        reward: a preset name, a callable of the finished :class:`Episode`, or None ("realx").
        max_turns: assistant turns before truncation (DeepEyesV2: 9).
        max_chars / max_tokens: budgets over the policy's own text; ``token_counter`` counts tokens.
        max_obs_chars: observations longer than this keep their head and tail.
        shuffle: serve tasks in a seeded random order (else in index order).
        system_prompt: override the prompt built from the tools.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(
        self,
        tasks: Sequence[Task] | Any,
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
        shuffle: bool = True,
        system_prompt: str | None = None,
        render_mode: str | None = None,
    ):
        if max_turns < 1:
            raise ValueError("max_turns must be >= 1")
        if max_tokens is not None and token_counter is None:
            raise ValueError("max_tokens needs a token_counter (e.g. lambda s: len(tok.encode(s)))")
        if render_mode not in (None, "ansi"):
            raise ValueError(f"unsupported render_mode {render_mode!r}")
        self.tasks = tasks
        self._finite = hasattr(tasks, "__len__")
        if self._finite and len(tasks) == 0:
            raise ValueError("the task list is empty")
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
        self.shuffle = shuffle
        self.system_prompt = system_prompt or build_system_prompt(list(self.tools.values()))
        self.render_mode = render_mode
        self.action_space = UnicodeText(max_action_chars)
        self.observation_space = observation_space(self.max_obs_chars, max_images=64, max_side=32768)
        self.episode: Episode | None = None
        self.conversation: Conversation | None = None
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

    def _pick_task(self, seed: int | None, options: Mapping[str, Any]) -> tuple[Task, list, list]:
        """Return (task, PIL images, skipped) — tasks whose images cannot be read are skipped."""
        if "task" in options:
            task = options["task"]
            return task, task.load_images(), []
        if "task_index" in options:
            task = self.tasks[int(options["task_index"])]
            return task, task.load_images(), []  # an explicit pick reports a broken image
        if "task_id" in options:
            matches = [t for t in self.tasks if t.id == options["task_id"]] if self._finite else []
            if not matches:
                raise KeyError(f"no task with id {options['task_id']!r}")
            return matches[0], matches[0].load_images(), []
        skipped: list[tuple[str, str]] = []
        for attempt in range(16):
            task = self.tasks[self._next_index(seed is not None and attempt == 0)]
            try:
                return task, task.load_images(), skipped
            except TaskImageError as exc:
                log.warning("skipping task %s: %s", task.id, exc)
                skipped.append((task.id, str(exc)))
        raise TaskImageError(f"16 tasks in a row had unreadable images: {skipped}")

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._end_tools()
        task, images, skipped = self._pick_task(seed, options or {})
        self.episode = Episode(task=task)
        self._policy_chars = self._policy_tokens = 0
        public = task.public_info()
        public["family"] = task.metadata.get("family") if task.metadata else None
        self._tool_ctx = ToolContext(
            task_id=task.id, images=images, turn=0, public_info=public, task=task
        )
        self._tool_start_errors = {}
        for tool in self.tools.values():
            try:
                tool.start_episode(self._tool_ctx)
            except Exception as exc:  # a tool that cannot start is reported on use, not fatal
                log.warning("tool %s failed to start: %s", tool.name, exc)
                self._tool_start_errors[tool.name] = f"{type(exc).__name__}: {exc}"
        arrays = [np.asarray(im, dtype=np.uint8) for im in images]
        question = self._clip(sanitize_text(task.prompt_text()))
        user = user_prompt(question.replace(IMAGE_TOKEN, _NEUTRAL_IMAGE), len(arrays))
        self.conversation = Conversation(self.system_prompt)
        self.conversation.add_user(user, arrays)
        obs = {
            "text": self._clip(f"{self.system_prompt}\n\n{user}"),
            "images": as_image_tuple(arrays),
        }
        info = dict(public, turn=0, skipped_tasks=skipped)
        return obs, info

    def step(self, action: str):
        if self.episode is None:
            raise RuntimeError("call reset() before step()")
        if self.episode.terminated or self.episode.truncated:
            obs = {"text": "Error: the episode is over; call reset().", "images": ()}
            return obs, 0.0, self.episode.terminated, self.episode.truncated, self._info(None)
        text = sanitize_text(action)
        self._policy_chars += len(text)
        if self.token_counter is not None:
            self._policy_tokens += int(self.token_counter(text))
        parsed = parse_action(text)
        turn = Turn(action=text, kind=parsed.kind, tool=None)
        self.episode.turns.append(turn)
        self.conversation.add_assistant(text)
        assert self._tool_ctx is not None
        self._tool_ctx.turn = len(self.episode.turns)

        if parsed.kind == "answer":
            self.episode.answer = parsed.payload
            self.episode.terminated = True
            obs = {"text": "", "images": ()}
        else:
            result = self._dispatch(parsed, turn)
            obs_text, arrays = self._observation(result)
            turn.observation, turn.n_images = obs_text, len(arrays)
            self.conversation.add_user(obs_text, arrays)
            obs = {"text": obs_text, "images": as_image_tuple(arrays)}
            self.episode.truncated = self._out_of_budget()

        reward = 0.0
        info = self._info(turn)
        if self.episode.terminated or self.episode.truncated:
            reward = self._pay(info)
            self._end_tools()
        return obs, reward, self.episode.terminated, self.episode.truncated, info

    def render(self) -> str | None:
        if self.render_mode != "ansi" or self.conversation is None:
            return None
        return self.conversation.transcript()

    def close(self) -> None:
        self._end_tools()
        for tool in self.tools.values():
            try:
                tool.close()
            except Exception as exc:
                log.warning("tool %s failed to close: %s", tool.name, exc)
        super().close()

    # ------------------------------------------------------------------ helpers
    def messages(self, image_format: str = "pil") -> list[dict[str, Any]]:
        """The conversation so far as OpenAI-style chat messages (see ``Conversation.render``)."""
        if self.conversation is None:
            return []
        return self.conversation.render(image_format)

    @property
    def assistant_prefill(self) -> str:
        """What DeepEyesV2 pre-fills at the start of each assistant turn."""
        return "<think>"

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

    def _observation(self, result: ToolResult) -> tuple[str, list[np.ndarray]]:
        arrays = []
        for im in list(result.images)[:MAX_TOOL_IMAGES]:
            try:
                arrays.append(resize_returned_image(im, self.max_image_pixels))
            except Exception as exc:
                log.warning("dropping an image the tool returned: %s", exc)
        text = sanitize_text(result.text)
        if text.count(IMAGE_TOKEN) != len(arrays):
            # Keep the invariant "one placeholder per image" even if a tool echoed "<image>".
            text = text.replace(IMAGE_TOKEN, _NEUTRAL_IMAGE)
            text = text + ("\n" + IMAGE_TOKEN * len(arrays) if arrays else "")
        return self._clip(text), arrays

    def _clip(self, text: str) -> str:
        if len(text) <= self.max_obs_chars:
            return text
        note = f"\n... [{len(text) - self.max_obs_chars} characters truncated] ...\n"
        keep = max(0, self.max_obs_chars - len(note))
        head, tail = keep // 2, keep - keep // 2
        return text[:head] + note + (text[-tail:] if tail else "")

    def _out_of_budget(self) -> bool:
        ep = self.episode
        if len(ep.turns) >= self.max_turns:
            return True
        if self.max_chars is not None and self._policy_chars >= self.max_chars:
            return True
        return self.max_tokens is not None and self._policy_tokens >= self.max_tokens

    def _info(self, turn: Turn | None) -> dict[str, Any]:
        ep = self.episode
        info: dict[str, Any] = {
            "turn": len(ep.turns),
            "action_kind": turn.kind if turn else None,
            "tool": turn.tool if turn else None,
            "tool_latency_s": turn.latency_s if turn else 0.0,
            "error": turn.error if turn else None,
            "n_images": turn.n_images if turn else 0,
        }
        return info

    def _pay(self, info: dict[str, Any]) -> float:
        ep = self.episode
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
            answer=ep.answer,
            ground_truth=ep.task.answer,
            reward_breakdown=breakdown,
        )
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
