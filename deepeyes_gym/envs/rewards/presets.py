"""Composable rewards and the presets the env knows by name.

A reward is any callable ``episode -> RewardResult`` (or a float). Building blocks:

* :class:`Accuracy` — 1/0 from the rules in :mod:`.answers`, an optional LLM judge for what the
  rules cannot decide, and the DeepEyesV2 answer-length cap;
* :class:`FormatReward` — 1/0 from the DeepEyesV2 format verdict (:mod:`.format`);
* combinators: :class:`Combine` (any formula over named components, each evaluated once),
  :func:`weighted_sum`, :class:`Penalty`, :class:`Bonus`, :class:`Discount`.

Presets (``DeepEyesEnv(reward="...")``, extra settings via ``reward_kwargs``):

``realx`` (default)
    ``accuracy - 0.25 * [format error]`` — the mission statement's "accuracy minus format
    penalties". Values: 1 (right, well-formed), 0.75 (right, malformed), 0 (wrong, well-formed),
    -0.25 (wrong or no answer, malformed). 0.25 keeps DeepEyesV2's accuracy:format weight ratio
    (0.8:0.2); being below 1 means format never outweighs correctness; and an episode that never
    answers scores below one that answers wrongly, so the policy is pushed to answer.
``deepeyesv2``
    The release: ``0.8*acc + 0.2*format`` for perception and reasoning tasks,
    ``0.8*acc*(1 - 0.1*[any <tool_call>]) + 0.2*format`` for search tasks.
``dapo``
    ``+1`` when the answer is right and well-formed, else ``-1`` (DAPO's rule reward; set
    ``require_format=False`` to ignore the format).
``accuracy``
    Accuracy alone (for evaluation).

Every preset takes ``judge`` (an :class:`~.judge.LLMJudge`, a :class:`~.judge.JudgeConfig`, a
base URL or None), ``tool_bonus`` (default 0: off; a bonus paid only when the answer is right and
a tool really ran, see :func:`effective_tool_use`), ``math_verify`` and ``answer_cap``.
The breakdown always holds ``accuracy``, ``format_ok`` and ``format_reasons``.
"""

from __future__ import annotations

import ast
import logging
from typing import Any, Callable, Collection, Mapping, Union

from ..episode import Episode
from .answers import MatchResult, canonical_kind, extract_answer, match_answer
from .base import RewardFn, RewardResult, register_reward
from .format import ANSWER_CAP, episode_format, reward_category
from .judge import JudgeConfig, JudgeError, LLMJudge, as_judge
from .mathverify import MathVerifier

__all__ = [
    "Accuracy",
    "FormatReward",
    "Combine",
    "weighted_sum",
    "Penalty",
    "Bonus",
    "Discount",
    "format_failed",
    "search_tool_call_used",
    "correct_with_tool_use",
    "effective_tool_use",
    "realx",
    "deepeyesv2",
    "dapo",
    "accuracy",
    "REALX_FORMAT_PENALTY",
    "DEEPEYESV2_WEIGHTS",
    "SEARCH_DISCOUNT",
]

log = logging.getLogger(__name__)

REALX_FORMAT_PENALTY = 0.25
DEEPEYESV2_WEIGHTS = (0.8, 0.2)  # accuracy, format
SEARCH_DISCOUNT = 0.1  # accuracy discount of a search task when any tool call was made

JudgeSpec = Union[LLMJudge, JudgeConfig, str, None]
Predicate = Callable[[Episode, RewardResult], bool]


def _as_result(out: RewardResult | float) -> RewardResult:
    return out if isinstance(out, RewardResult) else RewardResult(float(out), {})


# ----------------------------------------------------------------------------- components
class Accuracy:
    """1.0 when the final answer is right, else 0.0.

    Order: no answer -> 0; answer of ``answer_cap`` characters or more on a perception/search task
    -> 0 (anti judge-hacking); the rules of :func:`~.answers.match_answer` (kind, options from
    the task; ``task.metadata["tolerance"]`` and ``["unordered"]`` honoured); the judge only when
    the rules cannot decide (Yes/No prompt, or TRUE/FALSE for reasoning/math tasks).

    When the judge fails (endpoint down, bad replies) the undecided answer scores 0, the error is
    logged once and reported as ``breakdown["judge_error"]``; ``on_judge_error="raise"`` raises
    instead.
    """

    def __init__(
        self,
        *,
        judge: JudgeSpec = None,
        math_verify: bool | MathVerifier = True,
        answer_cap: int | None = ANSWER_CAP,
        on_judge_error: str = "rules",
    ):
        if on_judge_error not in ("rules", "raise"):
            raise ValueError("on_judge_error must be 'rules' or 'raise'")
        self.judge = as_judge(judge)
        self.math_verify = math_verify
        self.answer_cap = answer_cap
        self.on_judge_error = on_judge_error
        self._warned = False

    def __call__(self, episode: Episode) -> RewardResult:
        task = episode.task
        category = reward_category(task)
        bd: dict[str, Any] = {"accuracy": 0.0, "category": category}
        answer = episode.prediction if episode.prediction is not None else extract_answer(episode.response_text)
        if answer is None or not answer.strip():
            bd["accuracy_method"] = "no_answer"
            return RewardResult(0.0, bd)
        cap = None if category == "reasoning" else self.answer_cap
        if cap is not None and len(answer) >= cap:
            bd["accuracy_method"] = "answer_too_long"
            return RewardResult(0.0, bd)
        try:
            kind = canonical_kind(task.answer_kind)
        except ValueError as exc:
            kind, bd["kind_error"] = None, str(exc)
        meta = task.metadata or {}
        res: MatchResult = match_answer(
            answer, task.answer, kind=kind, options=task.options,
            tolerance=meta.get("tolerance"), unordered=bool(meta.get("unordered", False)),
            math_verify=self.math_verify,
        )
        bd["answer_kind"] = res.kind
        if res.match is not None or self.judge is None:
            bd["accuracy"] = 1.0 if res.match else 0.0
            bd["accuracy_method"] = f"rules:{res.method}"
            return RewardResult(bd["accuracy"], bd)
        mode = "math" if category == "reasoning" else "yesno"
        try:
            verdict = self.judge.judge(task.prompt_text(), task.answer, answer, mode=mode)
        except JudgeError as exc:
            if self.on_judge_error == "raise":
                raise
            if not self._warned:
                log.warning("LLM judge failed; undecided answers score 0 until it is back: %s", exc)
                self._warned = True
            bd["accuracy_method"] = f"rules:{res.method}"
            bd["judge_error"] = str(exc)
            return RewardResult(0.0, bd)
        bd["accuracy"] = 1.0 if verdict.correct else 0.0
        bd["accuracy_method"] = "judge_cache" if verdict.cached else "judge"
        if verdict.correct is None:
            bd["accuracy_method"] = "judge_unparsed"
            bd["judge_raw"] = verdict.raw[-500:]
        return RewardResult(bd["accuracy"], bd)


class FormatReward:
    """1.0 when the episode passes the DeepEyesV2 format verdict, else 0.0."""

    def __init__(self, *, answer_cap: int | None = ANSWER_CAP):
        self.answer_cap = answer_cap

    def __call__(self, episode: Episode) -> RewardResult:
        v = episode_format(episode, answer_cap=self.answer_cap)
        bd = {
            "format_ok": v.ok,
            "format_reasons": list(v.reasons),
            "tool_call_used": v.tool_call_used,
            "answer_too_long": v.answer_too_long,
            "category": reward_category(episode.task),
        }
        return RewardResult(1.0 if v.ok else 0.0, bd)


# ----------------------------------------------------------------------------- combinators
class Combine:
    """Evaluate named components once, merge their breakdowns, and combine their values.

    ``formula(results, episode)`` gets ``{name: RewardResult}``. Breakdowns merge in component
    order (later keys win); ``breakdown["components"]`` holds each component's value.
    """

    def __init__(self, formula: Callable[[Mapping[str, RewardResult], Episode], float], **components: RewardFn):
        if not components:
            raise ValueError("Combine needs at least one component")
        self.formula = formula
        self.components = components

    def __call__(self, episode: Episode) -> RewardResult:
        results = {n: _as_result(fn(episode)) for n, fn in self.components.items()}
        bd: dict[str, Any] = {}
        for r in results.values():
            bd.update(r.breakdown)
        bd["components"] = {n: r.value for n, r in results.items()}
        return RewardResult(float(self.formula(results, episode)), bd)


def weighted_sum(**terms: tuple[float, RewardFn]) -> Combine:
    """``sum(weight * component)``, e.g. ``weighted_sum(acc=(0.8, Accuracy()), fmt=(0.2, FormatReward()))``."""
    weights = {n: float(w) for n, (w, _) in terms.items()}

    def formula(results: Mapping[str, RewardResult], episode: Episode) -> float:
        total = 0.0
        for n, w in weights.items():
            total += w * results[n].value
        return total

    return Combine(formula, **{n: fn for n, (_, fn) in terms.items()})


class _Adjust:
    def __init__(self, base: RewardFn, amount: float, when: Predicate, name: str):
        self.base, self.amount, self.when, self.name = base, float(amount), when, name

    def _apply(self, value: float) -> float:
        raise NotImplementedError

    def __call__(self, episode: Episode) -> RewardResult:
        r = _as_result(self.base(episode))
        bd = dict(r.breakdown)
        hit = bool(self.when(episode, r))
        bd[self.name] = self.amount if hit else 0.0
        return RewardResult(self._apply(r.value) if hit else r.value, bd)


class Penalty(_Adjust):
    """``base - amount`` when ``when(episode, base_result)``; ``breakdown[name]`` = applied amount."""

    def __init__(self, base: RewardFn, amount: float, when: Predicate, name: str = "penalty"):
        super().__init__(base, amount, when, name)

    def _apply(self, value: float) -> float:
        return value - self.amount


class Bonus(_Adjust):
    """``base + amount`` when ``when(episode, base_result)``."""

    def __init__(self, base: RewardFn, amount: float, when: Predicate, name: str = "bonus"):
        super().__init__(base, amount, when, name)

    def _apply(self, value: float) -> float:
        return value + self.amount


class Discount(_Adjust):
    """``base * (1 - factor)`` when ``when(episode, base_result)``."""

    def __init__(self, base: RewardFn, factor: float, when: Predicate, name: str = "discount"):
        super().__init__(base, factor, when, name)

    def _apply(self, value: float) -> float:
        return value * (1 - self.amount)


# ----------------------------------------------------------------------------- predicates
def format_failed(episode: Episode, result: RewardResult) -> bool:
    """The episode failed the format verdict (read from the breakdown when present)."""
    if "format_ok" in result.breakdown:
        return not result.breakdown["format_ok"]
    return not episode_format(episode).ok


def search_tool_call_used(episode: Episode, result: RewardResult) -> bool:  # noqa: ARG001
    """A search task whose response contains any ``<tool_call>`` (DeepEyesV2's discount rule)."""
    return reward_category(episode.task) == "search" and "<tool_call>" in episode.response_text


def _code_does_something(code: Any) -> bool:
    """False for code that is only comments, docstrings or ``pass`` (a known reward hack)."""
    if not isinstance(code, str):
        return False
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    for node in tree.body:
        if isinstance(node, ast.Pass):
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        return True
    return False


def effective_tool_use(episode: Episode, tools: Collection[str] | None = None) -> bool:
    """At least one tool turn ran without error (code: with at least one real statement)."""
    for t in episode.turns:
        if t.tool is None or t.error:
            continue
        if tools is not None and t.tool not in tools:
            continue
        if t.kind == "code" and not _code_does_something(t.arguments):
            continue
        return True
    return False


def correct_with_tool_use(episode: Episode, result: RewardResult) -> bool:
    """The answer is right and a tool was really used: the gate of the tool-use bonus."""
    return float(result.breakdown.get("accuracy", 0.0)) >= 1.0 and effective_tool_use(episode)


# ----------------------------------------------------------------------------- presets
class _Preset:
    """Names a composed reward and guarantees the breakdown keys the env reads."""

    def __init__(self, name: str, fn: RewardFn):
        self.name, self.fn = name, fn

    def __call__(self, episode: Episode) -> RewardResult:
        r = _as_result(self.fn(episode))
        bd = r.breakdown
        if "format_ok" not in bd or "format_reasons" not in bd:
            v = episode_format(episode)
            bd.setdefault("format_ok", v.ok)
            bd.setdefault("format_reasons", list(v.reasons))
        bd.setdefault("accuracy", 0.0)
        bd["preset"] = self.name
        return r

    def __repr__(self) -> str:
        return f"<reward preset {self.name!r}>"


def _with_tool_bonus(fn: RewardFn, tool_bonus: float) -> RewardFn:
    if tool_bonus:
        return Bonus(fn, tool_bonus, correct_with_tool_use, name="tool_bonus")
    return fn


def _parts(judge: JudgeSpec, math_verify: bool | MathVerifier, answer_cap: int | None, on_judge_error: str):
    acc = Accuracy(judge=judge, math_verify=math_verify, answer_cap=answer_cap, on_judge_error=on_judge_error)
    return acc, FormatReward(answer_cap=answer_cap)


def realx(
    *,
    judge: JudgeSpec = None,
    format_penalty: float = REALX_FORMAT_PENALTY,
    tool_bonus: float = 0.0,
    math_verify: bool | MathVerifier = True,
    answer_cap: int | None = ANSWER_CAP,
    on_judge_error: str = "rules",
) -> RewardFn:
    """Accuracy minus a format penalty (the default reward); see the module docstring."""
    acc, fmt = _parts(judge, math_verify, answer_cap, on_judge_error)
    base = Combine(lambda r, ep: r["accuracy"].value, accuracy=acc, format=fmt)
    fn = Penalty(base, format_penalty, format_failed, name="format_penalty")
    return _Preset("realx", _with_tool_bonus(fn, tool_bonus))


def deepeyesv2(
    *,
    judge: JudgeSpec = None,
    tool_bonus: float = 0.0,
    math_verify: bool | MathVerifier = True,
    answer_cap: int | None = ANSWER_CAP,
    on_judge_error: str = "rules",
) -> RewardFn:
    """DeepEyesV2's release reward: 0.8*acc (x0.9 on search tasks with a tool call) + 0.2*format."""
    acc, fmt = _parts(judge, math_verify, answer_cap, on_judge_error)
    w_acc, w_fmt = DEEPEYESV2_WEIGHTS
    fn = weighted_sum(
        accuracy=(w_acc, Discount(acc, SEARCH_DISCOUNT, search_tool_call_used, name="search_discount")),
        format=(w_fmt, fmt),
    )
    return _Preset("deepeyesv2", _with_tool_bonus(fn, tool_bonus))


def dapo(
    *,
    judge: JudgeSpec = None,
    require_format: bool = True,
    tool_bonus: float = 0.0,
    math_verify: bool | MathVerifier = True,
    answer_cap: int | None = ANSWER_CAP,
    on_judge_error: str = "rules",
) -> RewardFn:
    """+1 for a right (and, by default, well-formed) answer, else -1."""
    acc, fmt = _parts(judge, math_verify, answer_cap, on_judge_error)

    def formula(r: Mapping[str, RewardResult], ep: Episode) -> float:
        ok = r["accuracy"].value >= 1.0 and (r["format"].value >= 1.0 or not require_format)
        return 1.0 if ok else -1.0

    fn = Combine(formula, accuracy=acc, format=fmt)
    return _Preset("dapo", _with_tool_bonus(fn, tool_bonus))


def accuracy(
    *,
    judge: JudgeSpec = None,
    math_verify: bool | MathVerifier = True,
    answer_cap: int | None = ANSWER_CAP,
    on_judge_error: str = "rules",
) -> RewardFn:
    """Accuracy alone (1/0), with the format verdict reported in the breakdown."""
    acc, fmt = _parts(judge, math_verify, answer_cap, on_judge_error)
    return _Preset("accuracy", Combine(lambda r, ep: r["accuracy"].value, accuracy=acc, format=fmt))


for _name, _factory in (("realx", realx), ("deepeyesv2", deepeyesv2), ("dapo", dapo), ("accuracy", accuracy)):
    register_reward(_name, _factory, overwrite=True)
