"""HTTP requests with retries: exponential back-off with jitter, optionally honouring Retry-After.

One retry loop for the package's HTTP clients (the LLM judge, the online search backends, the
OpenAI-compatible agent). Each caller keeps its own error types and wording: the loop returns the
response (or what ``handle`` makes of it), lets every non-transient failure through untouched,
and gives up with :class:`HTTPRetryError`, which carries the last transient failure.

``requests`` is imported lazily so that importing a module that uses this one stays cheap.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Container

if TYPE_CHECKING:
    import requests

__all__ = [
    "RETRY_STATUS",
    "RetryPolicy",
    "RetryableResponse",
    "HTTPRetryError",
    "request_with_retries",
    "retry_after_s",
]

# Statuses worth another try: rate limited, or the server (or a proxy in front of it) failed.
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts, and how long to wait between them.

    Before retry ``k`` (1, 2, ...) the wait is ``backoff_s * 2 ** (k - 1)`` times a jitter factor
    drawn uniformly from ``[jitter[0], jitter[1])`` (None: no jitter; jitter keeps threads that
    failed together from retrying together), raised to the server's ``Retry-After`` when
    ``honour_retry_after``, and capped at ``max_backoff_s`` (None: no cap).
    ``cap_before_jitter`` caps the back-off before the jitter instead, so capped waits still
    spread over ``[jitter[0] * cap, jitter[1] * cap)``.
    """

    max_retries: int = 3
    backoff_s: float = 1.0
    max_backoff_s: float | None = None
    jitter: tuple[float, float] | None = (0.5, 1.0)
    cap_before_jitter: bool = False
    honour_retry_after: bool = False

    @property
    def attempts(self) -> int:
        """Attempts in all (the first one plus the retries)."""
        return self.max_retries + 1

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        wait = self.backoff_s * 2 ** (retry - 1)
        if self.cap_before_jitter and self.max_backoff_s is not None:
            wait = min(self.max_backoff_s, wait)
        if self.jitter is not None:
            lo, hi = self.jitter
            wait *= lo + (hi - lo) * random.random()
        if self.honour_retry_after and retry_after is not None:
            wait = max(wait, retry_after)
        if not self.cap_before_jitter and self.max_backoff_s is not None:
            wait = min(wait, self.max_backoff_s)
        return wait


class RetryableResponse(Exception):
    """Raised by a ``handle`` callback: this response is a transient failure, try again.

    The message (if any) becomes the :attr:`HTTPRetryError.reason` should it be the last one.
    """


class HTTPRetryError(Exception):
    """Every attempt failed transiently.

    ``response`` is the last response when the last failure was one (by status, or a
    :class:`RetryableResponse` from ``handle``; it is closed, its body still readable unless it
    was streamed), else None; ``exception`` is the last exception (a retried ``requests`` error
    or the :class:`RetryableResponse`); ``reason`` says what went wrong the last time.
    """

    def __init__(
        self,
        attempts: int,
        response: "requests.Response | None" = None,
        exception: BaseException | None = None,
    ) -> None:
        self.attempts = attempts
        self.response = response
        self.exception = exception
        if isinstance(exception, RetryableResponse) and str(exception):
            self.reason = str(exception)
        elif response is not None:
            self.reason = f"HTTP {response.status_code}: {response.text[:200]}"
        elif exception is not None:
            self.reason = f"{type(exception).__name__}: {exception}"
        else:
            self.reason = "no attempt made"
        super().__init__(f"gave up after {attempts} attempts: {self.reason}")

    @property
    def status(self) -> int | None:
        """The last response's HTTP status, or None when the last failure was an exception."""
        return self.response.status_code if self.response is not None else None


def retry_after_s(resp: "requests.Response") -> float | None:
    """The ``Retry-After`` header in seconds; None when absent or an HTTP date."""
    value = resp.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to the computed back-off


def request_with_retries(
    send: Callable[[], "requests.Response"],
    *,
    policy: RetryPolicy,
    retry_on: Container[int] | Callable[[int], bool] = RETRY_STATUS,
    retry_exceptions: tuple[type[BaseException], ...] | None = None,
    handle: Callable[["requests.Response"], Any] | None = None,
    on_retry: Callable[[int], None] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> Any:
    """Call ``send`` (one HTTP request) until it succeeds, at most ``policy.attempts`` times;
    return the response, or what ``handle`` makes of it.

    ``send`` makes the request itself, so a caller can count, rate limit or bound each attempt.
    A response whose status is in ``retry_on`` (a set of statuses, or a predicate on one) is
    retried; any other goes to ``handle`` (default: returned as is), which may raise
    :class:`RetryableResponse` to retry it too. Exceptions of ``retry_exceptions`` (default:
    ``requests`` connection errors and time-outs) are retried; all others propagate at once.
    ``on_retry(k)`` runs before retry ``k`` sleeps; ``sleep`` defaults to :func:`time.sleep`
    (looked up per call, so tests can patch it). Raises :class:`HTTPRetryError` when no attempt
    is left.
    """
    if retry_exceptions is None:
        import requests

        retry_exceptions = (requests.ConnectionError, requests.Timeout)
    retryable = retry_on if callable(retry_on) else retry_on.__contains__
    response = exception = retry_after = None
    for attempt in range(policy.attempts):
        if attempt:
            if on_retry is not None:
                on_retry(attempt)
            (sleep or time.sleep)(policy.delay(attempt, retry_after))
            retry_after = None
        try:
            resp = send()
        except retry_exceptions as exc:
            response, exception = None, exc
            continue
        try:
            if retryable(resp.status_code):
                raise RetryableResponse()
            return resp if handle is None else handle(resp)
        except RetryableResponse as exc:
            response, exception = resp, exc
            if policy.honour_retry_after:
                retry_after = retry_after_s(resp)
            resp.close()
    raise HTTPRetryError(policy.attempts, response, exception)
