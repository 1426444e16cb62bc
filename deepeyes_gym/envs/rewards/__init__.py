"""Rewards: plain, composable, unit-testable functions of a finished episode.

* :func:`answers_match` / :func:`match_answer` — rule-based answer equivalence
  (numbers, multiple choice, yes/no, text, LaTeX math via math-verify under a hard time-out);
* :class:`LLMJudge` — DeepEyesV2-style LLM-as-judge over an OpenAI-compatible endpoint,
  used only when the rules cannot decide;
* :func:`check_format` / :func:`episode_format` — the DeepEyesV2 format verdict with reasons;
* presets ``"realx"`` (default), ``"deepeyesv2"``, ``"dapo"``, ``"accuracy"`` and combinators
  (:class:`Combine`, :func:`weighted_sum`, :class:`Penalty`, :class:`Bonus`, :class:`Discount`);
* :func:`episode_from_text` — build an episode from strings to test a reward.
"""

from .answers import (
    KINDS,
    MatchResult,
    Number,
    answers_match,
    canonical_kind,
    clean_answer,
    extract_answer,
    infer_kind,
    match_answer,
    normalize_text,
    parse_number,
)
from .base import RewardFn, RewardResult, available_rewards, register_reward, resolve_reward
from .format import ANSWER_CAP, CATEGORIES, FormatVerdict, check_format, episode_format, reward_category
from .judge import (
    JudgeConfig,
    JudgeError,
    JudgeUnavailableError,
    JudgeVerdict,
    LLMJudge,
    build_messages,
    parse_verdict,
)
from .mathverify import MathVerifier, MathVerifyResult, default_verifier, math_equal, set_default_verifier
from .presets import (
    DEEPEYESV2_WEIGHTS,
    REALX_FORMAT_PENALTY,
    SEARCH_DISCOUNT,
    Accuracy,
    Bonus,
    Combine,
    Discount,
    FormatReward,
    Penalty,
    accuracy,
    correct_with_tool_use,
    dapo,
    deepeyesv2,
    effective_tool_use,
    format_failed,
    realx,
    search_tool_call_used,
    weighted_sum,
)
from .testing import episode_from_text, make_task

__all__ = [
    # base (the contract)
    "RewardResult", "RewardFn", "register_reward", "resolve_reward", "available_rewards",
    # answers
    "KINDS", "MatchResult", "Number", "answers_match", "match_answer", "canonical_kind",
    "clean_answer", "extract_answer", "infer_kind", "normalize_text", "parse_number",
    # math-verify
    "MathVerifier", "MathVerifyResult", "math_equal", "default_verifier", "set_default_verifier",
    # judge
    "JudgeConfig", "LLMJudge", "JudgeVerdict", "JudgeError", "JudgeUnavailableError",
    "build_messages", "parse_verdict",
    # format
    "ANSWER_CAP", "CATEGORIES", "FormatVerdict", "check_format", "episode_format", "reward_category",
    # presets and combinators
    "Accuracy", "FormatReward", "Combine", "weighted_sum", "Penalty", "Bonus", "Discount",
    "format_failed", "search_tool_call_used", "correct_with_tool_use", "effective_tool_use",
    "realx", "deepeyesv2", "dapo", "accuracy",
    "REALX_FORMAT_PENALTY", "DEEPEYESV2_WEIGHTS", "SEARCH_DISCOUNT",
    # testing
    "episode_from_text", "make_task",
]
