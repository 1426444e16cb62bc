"""Reference baselines: answer at once without tools, and act at random.

Both are deterministic given ``seed`` and the episode (task id, sample index, turn), never the
order in which a runner happens to call them, so a resumed evaluation reproduces a fresh one.
"""

from __future__ import annotations

import json
import re
import zlib
from typing import Any, Mapping, Sequence

import numpy as np

from .base import Agent, Message

__all__ = ["DirectAnswerAgent", "RandomAgent", "question_text", "episode_rng"]

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_WORD = re.compile(r"[A-Za-z][A-Za-z\-']{2,}")
_STOP = {
    "the", "what", "which", "how", "many", "much", "this", "that", "with", "from", "image", "shown",
    "answer", "number", "word", "are", "is", "in", "of", "and", "for", "does", "there", "its",
    "options", "give", "name", "who", "when", "where", "was", "were", "picture", "photo", "chart",
}


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content or () if isinstance(p, Mapping))


def question_text(messages: Sequence[Message]) -> str:
    """The first user message's text (the question, with any options)."""
    for m in messages:
        if m.get("role") == "user":
            return _text_of(m.get("content"))
    return ""


def _n_assistant(messages: Sequence[Message]) -> int:
    return sum(1 for m in messages if m.get("role") == "assistant")


def episode_rng(seed: int, messages: Sequence[Message], info: Mapping[str, Any] | None) -> np.random.Generator:
    """A generator fixed by (seed, task id, sample index, turn number)."""
    info = info or {}
    task = str(info.get("task_id", question_text(messages)))
    sample = int(info.get("sample", 0) or 0)
    return np.random.default_rng([seed, zlib.crc32(task.encode("utf-8")), sample, _n_assistant(messages)])


def _format_number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


class DirectAnswerAgent(Agent):
    """Answers in the first turn without any tool.

    A numeric question gets a plausible number (one named in the question, or a small count);
    a multiple-choice question a fixed option (``choice="first"``) or a random one
    (``choice="random"``); a yes/no question a random yes/no; anything else a short guess made of
    a content word of the question. Measures how far a suite can be solved without tools.
    """

    name = "direct"
    image_format = "pil"  # never looks at the pixels

    def __init__(self, seed: int = 0, choice: str = "random"):
        if choice not in ("first", "random"):
            raise ValueError("choice must be 'first' or 'random'")
        self.seed = int(seed)
        self.choice = choice

    def guess(self, messages: Sequence[Message], info: Mapping[str, Any] | None = None) -> str:
        info = info or {}
        rng = episode_rng(self.seed, messages, info)
        question = question_text(messages)
        options = info.get("options")
        kind = (info.get("answer_kind") or "").lower()
        if not options:
            found = re.findall(r"^\s*([A-H])[.)]\s", question, flags=re.M)
            options = {k: "" for k in found} if len(found) >= 2 else None
        if options:
            keys = list(options)
            return keys[0] if self.choice == "first" else keys[int(rng.integers(len(keys)))]
        if kind in ("yesno", "yes/no", "bool", "boolean"):
            return "yes" if rng.random() < 0.5 else "no"
        if kind in ("numeric", "number", "count", "integer", "float", "math"):
            numbers = [float(n) for n in _NUMBER.findall(question)]
            pool = numbers + [float(k) for k in range(1, 11)]
            return _format_number(pool[int(rng.integers(len(pool)))])
        words = [w for w in _WORD.findall(question) if w.lower() not in _STOP]
        capitalised = [w for w in words if w[0].isupper()]
        pool = capitalised or words or ["unknown"]
        return pool[int(rng.integers(len(pool)))]

    def act(self, messages: Sequence[Message], info: Mapping[str, Any] | None = None) -> str:
        answer = self.guess(messages, info)
        return f"<think>I will answer directly from the question, without tools.</think>\n<answer>{answer}</answer>"


# A few code snippets a random policy may run: valid, invalid, image-returning, slow-ish.
_SNIPPETS = (
    "print(image_1.size)",
    "import numpy as np\nprint(np.asarray(image_1).mean(axis=(0, 1)))",
    "w, h = image_1.size\ncrop = image_1.crop((0, 0, max(1, w // {d}), max(1, h // {d})))\ndisplay(crop)",
    "import matplotlib.pyplot as plt\nplt.imshow(image_1)\nplt.show()",
    "print(undefined_name_{d})",
    "x = {d}\nprint(x * x)",
)


class RandomAgent(Agent):
    """Random turns from the action space: code, tool calls with random arguments (from the tool
    schemas in the system prompt), malformed text, and answers.

    The chance to answer grows with the turn number (``p_answer`` at the first turn, +0.15 each
    turn), so most episodes end by an answer rather than the turn budget.
    """

    name = "random"
    image_format = "pil"

    def __init__(self, seed: int = 0, p_answer: float = 0.2, p_malformed: float = 0.1):
        self.seed = int(seed)
        self.p_answer = float(p_answer)
        self.p_malformed = float(p_malformed)

    @staticmethod
    def _tool_schemas(messages: Sequence[Message]) -> list[dict[str, Any]]:
        system = next((_text_of(m.get("content")) for m in messages if m.get("role") == "system"), "")
        block = re.search(r"<tools>\n(.*?)\n</tools>", system, re.S)
        schemas = []
        for line in (block.group(1).splitlines() if block else ()):
            try:
                fn = json.loads(line).get("function", {})
            except (json.JSONDecodeError, AttributeError):
                continue
            if isinstance(fn, dict) and fn.get("name"):
                schemas.append(fn)
        return schemas

    @staticmethod
    def _random_value(spec: Mapping[str, Any], rng: np.random.Generator) -> Any:
        kind = spec.get("type", "string")
        kind = kind[0] if isinstance(kind, list) else kind
        if kind == "integer":
            return int(rng.integers(0, 5))
        if kind == "number":
            return float(np.round(rng.uniform(0, 500), 1))
        if kind == "boolean":
            return bool(rng.random() < 0.5)
        if kind == "array":
            n = int(spec.get("minItems", 4))
            xs = np.sort(rng.uniform(0, 600, n)).round(1)
            return [float(x) for x in xs]
        if kind == "object":
            return {}
        return str(rng.choice(["bridge", "museum", "red squares", "who designed it", "1998"]))

    def act(self, messages: Sequence[Message], info: Mapping[str, Any] | None = None) -> str:
        rng = episode_rng(self.seed, messages, info)
        turn = _n_assistant(messages)
        roll = rng.random()
        if roll < min(1.0, self.p_answer + 0.15 * turn):
            return f"<think>random</think>\n<answer>{DirectAnswerAgent(int(rng.integers(1 << 30))).guess(messages, info)}</answer>"
        if roll > 1 - self.p_malformed:
            return str(rng.choice(["", "<think>hmm", "<answer></answer>", "<tool_call>{oops</tool_call>",
                                   "<code>print(1)</code>"]))
        schemas = self._tool_schemas(messages)
        system = _text_of(messages[0].get("content")) if messages else ""
        has_code = "<code>" in system
        options = (["code"] if has_code else []) + [s["name"] for s in schemas]
        if not options:
            return "<think>no tools</think>\n<answer>unknown</answer>"
        pick = options[int(rng.integers(len(options)))]
        if pick == "code":
            code = str(rng.choice(_SNIPPETS)).replace("{d}", str(int(rng.integers(2, 6))))
            return f"<think>random code</think>\n<code>\n```python\n{code}\n```\n</code>"
        schema = next(s for s in schemas if s["name"] == pick)
        params = schema.get("parameters", {}) or {}
        props = params.get("properties", {}) or {}
        required = list(params.get("required", []) or [])
        keys = required + [k for k in props if k not in required and rng.random() < 0.3]
        args = {k: self._random_value(props.get(k, {}), rng) for k in keys}
        call = json.dumps({"name": pick, "arguments": args})
        return f"<think>random tool</think>\n<tool_call>{call}</tool_call>"
