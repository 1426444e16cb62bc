"""LLM-as-judge for free-form answers over any OpenAI-compatible chat endpoint.

DeepEyesV2 judged accuracy with Qwen2.5-72B-Instruct behind a vLLM server: a Yes/No verdict for
perception and search data, a TRUE/FALSE equivalence verdict for math. This module does the same
with its own prompts, for any server speaking ``POST {base_url}/chat/completions`` (vLLM, SGLang,
llama.cpp, TGI, hosted APIs):

* verdicts are cached on disk (sqlite, keyed by model, mode, prompt version and the three texts),
  so a repeated (question, reference, prediction) never costs a second request;
* transient failures (connection refused, time-outs, HTTP 429/5xx, unparseable verdicts) are
  retried with exponential back-off; other HTTP errors fail at once with the server's message;
* at most ``max_concurrency`` requests are in flight per judge, whatever the number of threads;
* an unreachable endpoint raises :class:`JudgeUnavailableError` naming the URL, and the judge then
  fails fast for ``cooldown_s`` instead of stalling every episode on retries.

Rewards call the judge only when the rules in :mod:`.answers` cannot decide.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from ...http import HTTPRetryError, RetryableResponse, RetryPolicy, request_with_retries

__all__ = [
    "JudgeConfig",
    "JudgeVerdict",
    "LLMJudge",
    "JudgeError",
    "JudgeUnavailableError",
    "JUDGE_MODES",
    "parse_verdict",
    "build_messages",
    "default_cache_path",
]

JUDGE_MODES = ("yesno", "math")
PROMPT_VERSION = "v1"  # part of the cache key: change it when the prompts change


class JudgeError(RuntimeError):
    """The judge answered, but not usefully (bad request, unknown model, malformed reply)."""


class JudgeUnavailableError(JudgeError):
    """The judge endpoint could not be reached (down, wrong URL, time-outs)."""


def default_cache_path() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "deepeyes_gym", "judge_cache.sqlite")


@dataclass
class JudgeConfig:
    """Where and how to reach the judge.

    Args:
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1``.
        model: model name; None asks the server (``GET /models``, first entry) like DeepEyesV2.
        api_key: bearer token; None reads ``api_key_env`` (unset: no header, fine for vLLM).
        timeout_s: per-request time-out.
        max_retries: attempts after the first for transient failures.
        backoff_s: first back-off delay, doubled each retry (with jitter).
        max_concurrency: requests in flight at once.
        cache_path: sqlite file; None uses :func:`default_cache_path`, ``""`` disables the cache.
        temperature / max_tokens: sampling settings (0 makes verdicts reproducible).
        cooldown_s: after the endpoint is found down, fail fast for this long.
    """

    base_url: str
    model: str | None = None
    api_key: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    max_retries: int = 3
    backoff_s: float = 1.0
    max_concurrency: int = 8
    cache_path: str | None = None
    temperature: float = 0.0
    max_tokens: int = 1024
    cooldown_s: float = 30.0
    extra_body: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.base_url, str) or not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"judge base_url must be an http(s) URL, got {self.base_url!r}")
        if self.max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.base_url = self.base_url.rstrip("/")


@dataclass(frozen=True)
class JudgeVerdict:
    """``correct`` is None when the judge's reply had no recognisable verdict."""

    correct: bool | None
    raw: str
    cached: bool = False
    mode: str = "yesno"


# ----------------------------------------------------------------------------- prompts
_YESNO_SYSTEM = """You are a meticulous grader. You compare a model's answer with the reference \
answer to a question and decide whether they give the same final answer.

Rules:
- The reference answer is always correct. Do not solve the question yourself.
- Ignore differences in wording, formatting, capitalisation, LaTeX, units written differently \
and extra explanation, as long as the final answer is unambiguous and the same.
- Numbers must agree; a number with a different value is wrong.
- For multiple choice, the chosen option (letter or text) must be the reference option.
- An answer that gives several candidates, hedges between options, or only partly matches is \
wrong. An answer that is almost right but has a mistake is wrong.

Think briefly, then give the verdict on the last line as \\boxed{Yes} or \\boxed{No}."""

_YESNO_USER = """[Question]: {question}
[Reference answer]: {reference}
[Model answer]: {prediction}"""

_MATH_USER = """# CONTEXT #
I am a teacher grading a student's final answer to a math problem against the reference answer.

# OBJECTIVE #
Judge whether the student's final answer is mathematically equivalent to the reference answer. \
Pay attention to LaTeX: the expressions, variables and operations must be equivalent; \
equivalent forms (fractions vs decimals, factored vs expanded) count as equal.

# ATTENTION #
- The reference answer is ALWAYS correct.
- The judgement is only TRUE or FALSE. It is FALSE if the student's answer has any mistake, \
even a minor one, or gives several different answers.
- Do not give extra explanation.

# RESPONSE FORMAT #
## Equivalence Judgement
TRUE or FALSE

**Question**:
{question}

**Reference Answer**
{reference}

## Student Final Answer
{prediction}"""


def build_messages(question: str, reference: str, prediction: str, mode: str) -> list[dict[str, str]]:
    """The chat messages sent to the judge for one verdict."""
    if mode == "math":
        content = _MATH_USER.format(question=question, reference=reference, prediction=prediction)
        return [{"role": "user", "content": content}]
    if mode == "yesno":
        user = _YESNO_USER.format(question=question, reference=reference, prediction=prediction)
        return [{"role": "system", "content": _YESNO_SYSTEM}, {"role": "user", "content": user}]
    raise ValueError(f"judge mode must be one of {JUDGE_MODES}, got {mode!r}")


_BOXED = re.compile(r"\\boxed\{\s*\**\s*(yes|no|true|false)\s*\**\s*\}", re.I)
_WORD = re.compile(r"\b(yes|no|true|false)\b", re.I)
_THINK = re.compile(r"<think>.*?</think>", re.S)


def parse_verdict(text: str, mode: str) -> bool | None:
    """Read the verdict from a judge reply; None when there is none or it is contradictory."""
    text = _THINK.sub("", text or "")  # reasoning judges: ignore their thoughts
    if mode == "math":
        part = text.split("Equivalence Judgement")[-1].lower()
        has_t, has_f = "true" in part, "false" in part
        if has_t != has_f:
            return has_t
        boxed = _BOXED.findall(text)
        return boxed[-1].lower() in ("true", "yes") if boxed else None
    boxed = _BOXED.findall(text)
    if boxed:
        return boxed[-1].lower() in ("yes", "true")
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    words = {w.lower() for w in _WORD.findall(lines[-1])}
    if words and words <= {"yes", "true"}:
        return True
    if words and words <= {"no", "false"}:
        return False
    return None


# ----------------------------------------------------------------------------- cache
class _Cache:
    """A small thread-safe sqlite verdict cache (one connection guarded by a lock)."""

    def __init__(self, path: str):
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=30)
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, correct INTEGER NOT NULL,"
                " raw TEXT NOT NULL, created REAL NOT NULL)"
            )

    def get(self, key: str) -> tuple[bool, str] | None:
        with self._lock:
            row = self._db.execute("SELECT correct, raw FROM verdicts WHERE key = ?", (key,)).fetchone()
        return (bool(row[0]), row[1]) if row else None

    def put(self, key: str, correct: bool, raw: str) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?)", (key, int(correct), raw, time.time())
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()


# ----------------------------------------------------------------------------- judge
class LLMJudge:
    """Verdicts from an OpenAI-compatible chat endpoint, cached, retried and rate-bounded."""

    def __init__(self, config: JudgeConfig | str, **overrides: Any):
        if isinstance(config, str):
            config = JudgeConfig(base_url=config, **overrides)
        elif overrides:
            config = JudgeConfig(**{**config.__dict__, **overrides})
        self.config = config
        path = config.cache_path if config.cache_path is not None else default_cache_path()
        self._cache = _Cache(path) if path else None
        self._sem = threading.BoundedSemaphore(config.max_concurrency)
        self._local = threading.local()
        self._model = config.model
        self._model_lock = threading.Lock()
        self._down_until = 0.0
        self._down_reason = ""
        self.requests_sent = 0  # HTTP requests made (for tests and reports)
        self._count_lock = threading.Lock()

    # ------------------------------------------------------------- HTTP
    def _session(self):
        s = getattr(self._local, "session", None)
        if s is None:
            import requests  # core dependency; imported lazily to keep `import` cheap

            s = requests.Session()
            key = self.config.api_key or os.environ.get(self.config.api_key_env)
            if key:
                s.headers["Authorization"] = f"Bearer {key}"
            self._local.session = s
        return s

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        """One HTTP exchange with retries; raises JudgeUnavailableError / JudgeError."""
        import requests

        cfg = self.config
        url = cfg.base_url + path
        if time.monotonic() < self._down_until:
            raise JudgeUnavailableError(self._down_reason)

        def send() -> requests.Response:
            with self._sem:
                with self._count_lock:
                    self.requests_sent += 1
                return self._session().request(method, url, json=body, timeout=cfg.timeout_s)

        def read(resp: requests.Response) -> dict:
            if resp.status_code >= 400:  # 429 and 5xx were retried
                raise JudgeError(f"the judge at {url} answered HTTP {resp.status_code}: {resp.text[:500]}")
            try:
                return resp.json()
            except ValueError:
                raise RetryableResponse(f"non-JSON reply: {resp.text[:200]!r}") from None

        policy = RetryPolicy(cfg.max_retries, cfg.backoff_s, jitter=(0.5, 1.5))
        try:
            return request_with_retries(send, policy=policy, handle=read, retry_on=lambda s: s == 429 or s >= 500)
        except requests.RequestException as exc:  # neither a dropped connection nor a time-out
            raise JudgeError(f"request to the judge at {url} failed: {exc}") from exc
        except HTTPRetryError as err:
            reason = (
                f"the LLM judge at {cfg.base_url} is unavailable after {err.attempts} attempts "
                f"({err.reason}). Start an OpenAI-compatible server there (e.g. vLLM), fix the base_url, or "
                f"use a reward without a judge (judge=None)."
            )
        self._down_until = time.monotonic() + cfg.cooldown_s
        self._down_reason = reason
        raise JudgeUnavailableError(reason)

    def model(self) -> str:
        """The model name, asking the server when the config has none."""
        if self._model is None:
            with self._model_lock:
                if self._model is None:
                    data = self._request("GET", "/models")
                    try:
                        self._model = str(data["data"][0]["id"])
                    except (KeyError, IndexError, TypeError):
                        raise JudgeError(f"the judge at {self.config.base_url} lists no models: {data!r:.200}") from None
        return self._model

    def ping(self) -> bool:
        """True when the endpoint answers ``GET /models``."""
        try:
            self._request("GET", "/models")
            return True
        except JudgeError:
            return False

    # ------------------------------------------------------------- verdicts
    def cache_key(self, question: str, reference: str, prediction: str, mode: str) -> str:
        blob = json.dumps([PROMPT_VERSION, self.model(), mode, question, reference, prediction])
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def judge(self, question: str, reference: str, prediction: str, *, mode: str = "yesno") -> JudgeVerdict:
        """Is ``prediction`` the same answer as ``reference``? Cached; raises JudgeError."""
        if mode not in JUDGE_MODES:
            raise ValueError(f"judge mode must be one of {JUDGE_MODES}, got {mode!r}")
        question, reference, prediction = str(question), str(reference), str(prediction)
        key = self.cache_key(question, reference, prediction, mode)
        if self._cache is not None:
            hit = self._cache.get(key)
            if hit is not None:
                return JudgeVerdict(hit[0], hit[1], True, mode)
        body = {
            "model": self.model(),
            "messages": build_messages(question, reference, prediction, mode),
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
            **self.config.extra_body,
        }
        raw = ""
        # An unparseable reply is retried like a transient failure (the release retried too).
        for _ in range(self.config.max_retries + 1):
            data = self._request("POST", "/chat/completions", body)
            try:
                raw = str(data["choices"][0]["message"]["content"] or "")
            except (KeyError, IndexError, TypeError):
                raise JudgeError(f"malformed chat completion from the judge: {data!r:.300}") from None
            correct = parse_verdict(raw, mode)
            if correct is not None:
                if self._cache is not None:
                    self._cache.put(key, correct, raw)
                return JudgeVerdict(correct, raw, False, mode)
            if self.config.temperature == 0:
                body["temperature"] = 0.3  # the same prompt at 0 would give the same reply
        return JudgeVerdict(None, raw, False, mode)

    def judge_many(
        self, items: Iterable[tuple[str, str, str]] | Sequence[tuple[str, str, str]], *, mode: str = "yesno"
    ) -> list[JudgeVerdict]:
        """Judge (question, reference, prediction) triples concurrently (bounded), in order."""
        items = list(items)
        with ThreadPoolExecutor(max_workers=min(self.config.max_concurrency, max(1, len(items)))) as ex:
            return list(ex.map(lambda it: self.judge(*it, mode=mode), items))

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None

    def __enter__(self) -> "LLMJudge":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def as_judge(spec: "LLMJudge | JudgeConfig | str | None") -> LLMJudge | None:
    """None, a judge, a config or a base URL -> a judge (or None)."""
    if spec is None or isinstance(spec, LLMJudge):
        return spec
    if isinstance(spec, (JudgeConfig, str)):
        return LLMJudge(spec)
    raise TypeError(f"judge must be an LLMJudge, a JudgeConfig, a base URL or None, got {type(spec).__name__}")
