"""math-verify in helper processes: right answers, time-outs that cannot block, clean failure."""

from __future__ import annotations

import importlib.util
import os
import signal
import stat
import threading

import pytest

from deepeyes_gym.envs.rewards import MathVerifier, answers_match, clean_answer, match_answer

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("math_verify") is None, reason="math-verify is not installed"
)


@pytest.fixture(scope="module")
def verifier():
    v = MathVerifier(timeout_s=1.0, max_workers=2)
    assert v.warmup()
    yield v
    v.close()


def test_equal_and_different(verifier):
    assert verifier.verify("x^2+2x+1", "(x+1)^2").equal is True
    r = verifier.verify("x^2+1", "x^2-1")
    assert r.equal is False and r.status == "ok"
    assert verifier.verify("\\frac{1}{2}", "0.5").equal is True


def test_unparseable_is_reported(verifier):
    r = verifier.verify("", "")
    assert r.equal is None and r.status in ("unparsed", "error")


@pytest.mark.parametrize("gold", ["9^{9^{9^{9}}}", "3^{123456789}", "(10^{7})!"])
def test_pathological_input_times_out_and_the_helper_survives(verifier, gold):
    r = verifier.verify(gold, "1")
    assert r.status == "timeout" and r.equal is None
    assert verifier.verify("2x", "x+x").equal is True  # still serving


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs POSIX signals")
def test_a_stuck_helper_is_killed_at_the_deadline():
    # A helper stuck in C code ignores its own alarm; SIGSTOP simulates that exactly.
    with MathVerifier(timeout_s=0.5, max_workers=1) as v:
        assert v.warmup()
        (worker,) = v._idle
        os.kill(worker.proc.pid, signal.SIGSTOP)
        r = v.verify("1", "1")
        assert r.status == "timeout" and r.detail == "killed after its deadline"
        assert v.restarts == 1
        assert worker.proc.wait(timeout=10) is not None  # the stuck process is gone
        assert v.verify("1", "1").equal is True  # a fresh helper took over


def test_threads_share_the_pool(verifier):
    results = []
    lock = threading.Lock()

    def work(i):
        r = verifier.verify(f"{i}x", f"x*{i}")
        with lock:
            results.append(r.equal)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [True] * 8


@pytest.mark.skipif(os.name != "posix", reason="uses a shell script as the interpreter")
def test_missing_math_verify_makes_it_unavailable_not_broken(tmp_path):
    fake_python = tmp_path / "python"
    fake_python.write_text('#!/bin/sh\necho \'{"ready": false, "error": "ImportError: no math_verify"}\'\n')
    fake_python.chmod(fake_python.stat().st_mode | stat.S_IEXEC)
    with MathVerifier(python=str(fake_python)) as v:
        r = v.verify("x", "x")
        assert r.status == "unavailable" and "no math_verify" in r.detail
        assert not v.available
        assert v.verify("x", "x").status == "unavailable"  # remembered: no respawn per call
        assert match_answer("x^2+1", "(x+1)^2", kind="math", math_verify=v).match is None
    with MathVerifier(python=str(tmp_path / "does-not-exist")) as v:
        assert v.verify("x", "x").status == "unavailable"


def test_closed_verifier_answers_unavailable():
    v = MathVerifier()
    v.close()
    assert v.verify("1", "1").status == "unavailable"


def test_answers_match_takes_a_verifier(verifier):
    assert answers_match("(x+1)^2", "x^2+2x+1", kind="math", math_verify=verifier)
    r = match_answer("(x+1)^2", "x^2+2x+1", kind="math", math_verify=False)
    assert r.match is None and r.method == "math_unverified"
    r = match_answer("9^{9^{9^{9}}}", "1", kind="math", math_verify=verifier)
    assert r.match is None and r.method == "math_verify:timeout"


@pytest.mark.parametrize(
    "gold, pred",
    [("$21,16$ or $11$", "$21,16,11$"), ("$1$ and $2$ and $3$", "$\\boxed{1,2,3}$")],
)
def test_original_strings_settle_what_cleaned_ones_do_not(verifier, gold, pred):
    # Cleaning strips "$" across two formulas ("1$ and $2$ and $3"): math-verify must get the
    # strings as written, which is what match_answer now hands it.
    assert verifier.verify(clean_answer(gold), clean_answer(pred)).equal is False
    assert verifier.verify(gold, pred).equal is True
    assert match_answer(pred, gold, math_verify=verifier).match is True


def test_bad_arguments():
    with pytest.raises(ValueError):
        MathVerifier(timeout_s=0)
    with pytest.raises(ValueError):
        MathVerifier(max_workers=0)


def test_worker_module_has_no_package_imports():
    # The helper runs as a plain script: it must not need deepeyes_gym on sys.path.
    import deepeyes_gym.envs.rewards.mathverify as mv

    src = open(mv._WORKER, encoding="utf-8").read()
    assert "deepeyes_gym" not in src and "from ." not in src
