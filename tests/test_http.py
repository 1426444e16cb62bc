"""The shared HTTP retry loop: what is retried, how long it waits, and how it gives up."""

from __future__ import annotations

import random

import pytest
import requests

from deepeyes_gym.http import (
    HTTPRetryError,
    RetryableResponse,
    RetryPolicy,
    request_with_retries,
    retry_after_s,
)
from httpserver import LocalServer, QuietHandler

pytestmark = pytest.mark.timeout(30)

NO_JITTER = RetryPolicy(max_retries=3, backoff_s=1.0, jitter=None)


def response(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> requests.Response:
    r = requests.Response()
    r.status_code, r._content, r._content_consumed, r.encoding = status, body, True, "utf-8"
    r.headers.update(headers or {})
    return r


class Script:
    """A ``send`` that replays responses (or raises exceptions) in order, counting calls."""

    def __init__(self, *replies):
        self.replies = list(replies)
        self.calls = 0

    def __call__(self) -> requests.Response:
        self.calls += 1
        reply = self.replies.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        return reply


def run(send, policy=NO_JITTER, **kw):
    slept: list[float] = []
    kw.setdefault("sleep", slept.append)
    try:
        return request_with_retries(send, policy=policy, **kw), slept
    except HTTPRetryError as err:
        err.slept = slept
        raise


def test_429_and_5xx_are_retried_then_the_success_is_returned():
    send = Script(response(429), response(500), response(503), response(200, b"ok"))
    resp, slept = run(send)
    assert resp.status_code == 200 and resp.text == "ok" and send.calls == 4
    assert slept == [1.0, 2.0, 4.0]


@pytest.mark.parametrize("status", [200, 201, 302, 400, 401, 404, 422])
def test_other_statuses_are_returned_at_once(status):
    send = Script(response(status, b"no"))
    resp, slept = run(send)
    assert resp.status_code == status and send.calls == 1 and slept == []


def test_give_up_after_max_retries_with_the_last_failure():
    send = Script(*[response(503, b"busy")] * 4)
    with pytest.raises(HTTPRetryError) as info:
        run(send)
    err = info.value
    assert send.calls == 4 and err.attempts == 4 and err.status == 503
    assert err.reason == "HTTP 503: busy" and "gave up after 4 attempts: HTTP 503: busy" in str(err)
    assert err.slept == [1.0, 2.0, 4.0]  # no sleep after the last attempt


def test_connection_errors_and_time_outs_are_retried_others_propagate():
    send = Script(requests.ConnectionError("refused"), requests.Timeout("slow"), response(200))
    assert run(send)[0].status_code == 200 and send.calls == 3
    with pytest.raises(HTTPRetryError) as info:
        run(Script(requests.ConnectionError("refused"), requests.ReadTimeout("slow")),
            policy=RetryPolicy(max_retries=1, backoff_s=0.0))
    assert isinstance(info.value.exception, requests.ReadTimeout) and info.value.status is None
    assert info.value.reason == "ReadTimeout: slow"
    bad = Script(requests.exceptions.InvalidURL("no host"), response(200))
    with pytest.raises(requests.exceptions.InvalidURL):
        run(bad)
    assert bad.calls == 1


def test_retry_on_and_retry_exceptions_are_the_callers_choice():
    send = Script(response(408), response(500), response(200))
    resp, _ = run(send, retry_on=lambda status: status == 408)
    assert resp.status_code == 500 and send.calls == 2
    send = Script(requests.TooManyRedirects("loop"), response(200))
    assert run(send, retry_exceptions=(requests.RequestException,))[0].status_code == 200


def test_handle_shapes_the_result_and_can_ask_for_a_retry():
    def handle(resp):
        if resp.text == "garbled":
            raise RetryableResponse("non-JSON reply")
        return resp.json()

    retries: list[int] = []
    send = Script(response(200, b"garbled"), response(502), response(200, b'{"a": 1}'))
    value, slept = run(send, handle=handle, on_retry=retries.append)
    assert value == {"a": 1} and send.calls == 3 and retries == [1, 2] and len(slept) == 2
    with pytest.raises(HTTPRetryError) as info:
        run(Script(response(200, b"garbled")), RetryPolicy(max_retries=0), handle=handle)
    assert info.value.reason == "non-JSON reply" and info.value.response.status_code == 200
    with pytest.raises(KeyError):  # anything else from handle is the caller's error, not retried
        run(Script(response(200)), handle=lambda r: {}["x"])


def test_retry_after_is_honoured_only_when_asked_and_capped():
    busy = lambda: Script(response(429, headers={"Retry-After": "7"}), response(200))  # noqa: E731
    honour = RetryPolicy(max_retries=2, backoff_s=1.0, jitter=None, honour_retry_after=True)
    assert run(busy(), honour)[1] == [7.0]
    assert run(busy(), RetryPolicy(max_retries=2, backoff_s=1.0, jitter=None))[1] == [1.0]
    capped = RetryPolicy(max_retries=2, backoff_s=1.0, max_backoff_s=3.0, jitter=None, honour_retry_after=True)
    assert run(busy(), capped)[1] == [3.0]
    # a date (or garbage) falls back to the computed back-off; a short Retry-After never shortens it
    dated = Script(response(503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}), response(200))
    assert run(dated, honour)[1] == [1.0]
    short = Script(response(503), response(503, headers={"Retry-After": "0"}), response(200))
    assert run(short, honour)[1] == [1.0, 2.0]
    assert retry_after_s(response(429, headers={"Retry-After": "-3"})) == 0.0
    assert retry_after_s(response(429)) is None


def test_back_off_doubles_and_is_capped():
    p = RetryPolicy(max_retries=6, backoff_s=0.5, max_backoff_s=5.0, jitter=None)
    assert [p.delay(k) for k in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert p.attempts == 7
    assert [RetryPolicy(backoff_s=2.0, jitter=None).delay(k) for k in (1, 2, 3)] == [2.0, 4.0, 8.0]


def test_jitter_ranges_and_where_the_cap_applies():
    random.seed(0)
    for k in range(1, 8):
        base = 2.0 ** (k - 1)
        assert 0.5 * base <= RetryPolicy(jitter=(0.5, 1.5)).delay(k) < 1.5 * base
        after = RetryPolicy(max_backoff_s=10.0).delay(k)  # capped after the jitter
        assert 0.5 * base <= after < base if base * 0.5 < 10.0 else after == 10.0
        before = RetryPolicy(max_backoff_s=10.0, cap_before_jitter=True).delay(k)
        assert 0.5 * min(base, 10.0) <= before < min(base, 10.0)
    # past the cap, capping first still spreads the waits; capping last pins them at the cap
    assert len({RetryPolicy(max_backoff_s=4.0, cap_before_jitter=True).delay(10) for _ in range(20)}) > 1
    assert {RetryPolicy(max_backoff_s=4.0).delay(10) for _ in range(20)} == {4.0}


def test_default_sleep_is_looked_up_per_call(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr("time.sleep", slept.append)
    request_with_retries(Script(response(500), response(200)), policy=NO_JITTER)
    assert slept == [1.0]


def test_no_attempt_when_max_retries_is_negative():
    send = Script()
    with pytest.raises(HTTPRetryError, match="gave up after 0 attempts: no attempt made"):
        run(send, RetryPolicy(max_retries=-1))
    assert send.calls == 0


def test_against_a_local_server():
    class Handler(QuietHandler):
        def do_GET(self):
            with srv.lock:
                srv.requests.append(self.path)
                n = len(srv.requests)
            if n < 3:
                self.reply(503, {"error": "warming up"}, headers={"Retry-After": "0"})
            else:
                self.reply(200, {"ok": n})

    with LocalServer(Handler) as srv, requests.Session() as session:
        slept: list[float] = []
        policy = RetryPolicy(max_retries=3, backoff_s=0.01, honour_retry_after=True)
        data = request_with_retries(lambda: session.get(srv.base + "/x", timeout=5), policy=policy,
                                    handle=lambda r: r.json(), sleep=slept.append)
        assert data == {"ok": 3} and srv.requests == ["/x"] * 3 and len(slept) == 2
        assert all(0.005 <= s < 0.02 for s in slept)
