"""The reward contract: a reward is a plain callable of the finished episode."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Union

from ..episode import Episode

__all__ = ["RewardResult", "RewardFn", "register_reward", "resolve_reward", "available_rewards"]


@dataclass
class RewardResult:
    """A scalar reward and its named parts.

    By convention the breakdown holds ``accuracy`` (0..1), ``format_ok`` (bool) and
    ``format_reasons`` (list of str) so the env can surface them in ``info``.
    """

    value: float
    breakdown: dict[str, Any] = field(default_factory=dict)


RewardFn = Callable[[Episode], Union[RewardResult, float]]

_REWARDS: dict[str, Callable[..., RewardFn]] = {}


def register_reward(name: str, factory: Callable[..., RewardFn], *, overwrite: bool = False) -> None:
    """Register a reward factory under a name usable as ``reward="name"`` in the env."""
    if name in _REWARDS and not overwrite:
        raise ValueError(f"reward {name!r} is already registered (pass overwrite=True)")
    _REWARDS[name] = factory


def available_rewards() -> list[str]:
    return sorted(_REWARDS)


def resolve_reward(spec: str | RewardFn | None, **kwargs: Any) -> Callable[[Episode], RewardResult]:
    """Turn a preset name, a callable or None (the default preset) into a RewardResult callable."""
    if spec is None:
        spec = "realx"
    if isinstance(spec, str):
        try:
            fn = _REWARDS[spec](**kwargs)
        except KeyError:
            raise KeyError(f"unknown reward {spec!r}; presets: {', '.join(available_rewards())}") from None
    elif callable(spec):
        fn = spec
    else:
        raise TypeError(f"reward must be a preset name or a callable, got {type(spec).__name__}")

    def call(episode: Episode) -> RewardResult:
        out = fn(episode)
        if isinstance(out, RewardResult):
            return out
        return RewardResult(float(out), {})

    call.__wrapped__ = fn  # type: ignore[attr-defined]
    return call
