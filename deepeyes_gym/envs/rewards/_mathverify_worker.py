"""The math-verify helper process (run as a script; stdlib + math-verify only).

Protocol, one JSON object per line: the worker first writes ``{"ready": true}`` (or
``{"ready": false, "error": ...}`` when math-verify cannot be imported), then answers each request
``{"id": n, "gold": str, "pred": str, "timeout": seconds}`` with
``{"id": n, "equal": true|false|null, "status": "ok"|"unparsed"|"timeout"|"error", "detail": str}``.

A SIGALRM timer interrupts long pure-Python sympy work so the worker usually answers in time;
the parent still kills it when it does not (C-level big-integer arithmetic ignores signals).
"""

from __future__ import annotations

import json
import logging
import signal
import sys


class _Timeout(BaseException):
    """BaseException so that math-verify's ``except Exception`` cannot swallow it."""


def _on_alarm(signum, frame):  # noqa: ARG001
    raise _Timeout()


def _limit_memory(mb: int) -> None:
    if mb <= 0:
        return
    try:
        import resource

        limit = mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass  # not available on this platform: the parent's time-out still applies


def _wrap(s: str) -> str:
    s = s.strip()
    if "$" in s or "\\boxed" in s or "\\(" in s or "\\[" in s:
        return s
    return "$" + s + "$"


def main() -> None:
    mem_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    out = sys.stdout
    try:
        logging.disable(logging.WARNING)  # math-verify warns about disabled time-outs
        from math_verify import parse, verify
    except Exception as exc:  # ImportError or a broken install
        out.write(json.dumps({"ready": False, "error": f"{type(exc).__name__}: {exc}"}) + "\n")
        out.flush()
        return
    _limit_memory(mem_mb)
    soft = hasattr(signal, "setitimer")  # POSIX; elsewhere only the parent's kill applies
    if soft:
        signal.signal(signal.SIGALRM, _on_alarm)
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        try:
            req = json.loads(line)
            rid = req["id"]
        except (ValueError, KeyError, TypeError):
            continue
        resp = {"id": rid, "equal": None, "status": "error", "detail": ""}
        try:
            if soft:
                signal.setitimer(signal.ITIMER_REAL, max(0.01, float(req.get("timeout", 1.0))))
            try:
                gold = parse(_wrap(str(req["gold"])), parsing_timeout=None)
                pred = parse(_wrap(str(req["pred"])), parsing_timeout=None)
                if not gold or not pred:
                    resp.update(status="unparsed")
                else:
                    eq = verify(gold, pred, timeout_seconds=None)
                    resp.update(equal=bool(eq), status="ok")
            finally:
                if soft:
                    signal.setitimer(signal.ITIMER_REAL, 0)
        except _Timeout:
            resp.update(status="timeout")
        except MemoryError:
            resp.update(status="error", detail="MemoryError")
        except Exception as exc:
            resp.update(status="error", detail=f"{type(exc).__name__}: {exc}"[:300])
        out.write(json.dumps(resp) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
