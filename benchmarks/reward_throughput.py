"""Reward throughput: rule-based answer matching and the math-verify time-out bound.

Measures, in one run:

* rule-based matching (``match_answer(..., math_verify=False)``) in pairs/s on ONE core (the
  process is pinned to one CPU where the OS allows it), on generated unique pairs of every answer
  kind, against two baselines from the same run: a bare ``strip().lower() ==`` comparison (the
  floor) and math-verify run in-process on the same pairs (what a reward without rules costs);
* the agreement of the rules with the pairs' known labels (a throughput number is worthless if
  the matcher is wrong);
* whole-reward throughput: the ``realx`` preset on episodes built from the pairs;
* that math verification never blocks longer than its time-out: per-call latency of
  :class:`MathVerifier` on pathological inputs (towers of powers, huge factorials), on a helper
  frozen with SIGSTOP (as a helper stuck in C code would be), and from several threads at once.

Writes ``reward_throughput.json`` and ``reward_throughput.md`` to ``--out`` (default
benchmarks/results). Target: >= 20k pairs/s.

    python benchmarks/reward_throughput.py
    python benchmarks/reward_throughput.py --pairs 50000 --timeout 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deepeyes_gym.envs.rewards import (  # noqa: E402
    MathVerifier,
    episode_from_text,
    match_answer,
    resolve_reward,
)

TARGET_PAIRS_PER_S = 20_000
Pair = tuple  # (prediction, reference, kind, options, expected)


# ----------------------------------------------------------------------------- data
def make_pairs(n: int, seed: int = 0) -> list[Pair]:
    """``n`` unique labelled pairs covering every kind, about half of them matches."""
    rng = random.Random(seed)
    words = ["red", "blue", "green", "Paris", "London", "cat", "dog", "tower", "bridge", "river",
             "the Eiffel Tower", "a red car", "New York", "Mount Fuji", "the Louvre"]
    options = {"A": "red", "B": "blue", "C": "green", "D": "yellow"}
    gens: list[Callable[[int], Pair]] = [
        lambda i: (str(i), str(i), None, None, True),
        lambda i: (f"{i * 1000 + 7:,}", str(i * 1000 + 7), "numeric", None, True),
        lambda i: (str(i), str(i * 10), None, None, False),  # "12" vs "120"
        lambda i: (f"The answer is {i / 997:.6f}.", f"{i / 997:.3f}", None, None, True),
        lambda i: (f"{i / 997:.2f}", f"{i / 997:.5f}", "numeric", None, abs(round(i / 997, 2) - round(i / 997, 5)) <= 1e-4 * abs(round(i / 997, 5))),
        lambda i: (f"\\boxed{{\\frac{{{i}}}{{{i + 1}}}}}", f"{i / (i + 1):.6f}", None, None, True),
        lambda i: (f"{i % 100}%", f"{(i % 100) / 100}", None, None, True),
        lambda i: (f"\u2212{i}", f"-{i}", None, None, True),
        lambda i: (rng.choice(["B", "(B)", "Option B", "B.", "blue", "(B) blue"]), "B", "choice", options, True),
        lambda i: (rng.choice(["A", "C", "A or B", "red"]), "B", "choice", options, False),
        lambda i: (rng.choice(["Yes.", "yes", "YES", "Yes, it is."]), "yes", None, None, True),
        lambda i: (rng.choice(["No.", "no", "yes and no"]), "yes", None, None, False),
        lambda i: (f"The {w} {i}." if (w := rng.choice(words)) else "", f"{w} {i}", "text", None, True),
        lambda i: (f"{rng.choice(words)} {i + 1}", f"{rng.choice(words)} {i}", "text", None, False),
        lambda i: (f"{i}, {i + 1}, {i + 2}", f"{i + 2}, {i}, {i + 1}", "list", None, None),  # unordered below
        lambda i: (f"{i} apples", str(i), None, None, True),
    ]
    pairs = []
    for i in range(n):
        g = gens[i % len(gens)]
        p = g(i + 1)
        if p[4] is None:  # the list case: unordered flag travels in the kind slot
            p = (p[0], p[1], "list-unordered", None, True)
        pairs.append(p)
    rng.shuffle(pairs)
    return pairs


def _call(p: Pair, math_verify=False):
    pred, ref, kind, opts, _ = p
    if kind == "list-unordered":
        return match_answer(pred, ref, kind="list", unordered=True, math_verify=math_verify)
    return match_answer(pred, ref, kind=kind, options=opts, math_verify=math_verify)


def rate(fn: Callable[[], int], repeats: int) -> dict:
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - t0))
    return {"best": max(rates), "median": statistics.median(rates), "runs": rates}


# ----------------------------------------------------------------------------- sections
def bench_rules(pairs: list[Pair], repeats: int, mv_sample: int) -> dict:
    def rules() -> int:
        for p in pairs:
            _call(p)
        return len(pairs)

    def floor() -> int:
        for pred, ref, *_ in pairs:
            pred.strip().lower() == ref.strip().lower()  # noqa: B015
        return len(pairs)

    out = {"pairs": len(pairs), "rules": rate(rules, repeats), "string_compare": rate(floor, repeats)}
    results = [_call(p) for p in pairs]
    agree = sum((r.match is True) == p[4] for r, p in zip(results, pairs))
    out["agreement_with_labels"] = agree / len(pairs)
    out["decided_fraction"] = sum(r.match is not None for r in results) / len(pairs)
    out["cost_vs_string_compare"] = out["string_compare"]["median"] / out["rules"]["median"]
    try:  # the same pairs through math-verify in-process (the release's rule-free path)
        import logging

        from math_verify import parse, verify

        logging.disable(logging.WARNING)
        sample = pairs[:mv_sample]

        def mv() -> int:
            for pred, ref, *_ in sample:
                verify(parse(f"${ref}$", parsing_timeout=None), parse(f"${pred}$", parsing_timeout=None),
                       timeout_seconds=None)
            return len(sample)

        out["math_verify_in_process"] = rate(mv, 1)
        out["speedup_vs_math_verify"] = out["rules"]["median"] / out["math_verify_in_process"]["median"]
    except ImportError:
        out["math_verify_in_process"] = None
    return out


def bench_reward(pairs: list[Pair], n: int) -> dict:
    fn = resolve_reward("realx", math_verify=False)
    eps = []
    for pred, ref, kind, opts, _ in pairs[:n]:
        k = "list" if kind == "list-unordered" else kind
        eps.append(episode_from_text(f"<think>thinking</think><answer>{pred}</answer>", answer=ref,
                                     kind=k, options=opts, metadata={"unordered": kind == "list-unordered"}))
    t0 = time.perf_counter()
    for ep in eps:
        fn(ep)
    return {"episodes": len(eps), "episodes_per_s": len(eps) / (time.perf_counter() - t0)}


PATHOLOGICAL = [
    ("9^{9^{9^{9}}}", "1"),
    ("3^{123456789}", "1"),
    ("(10^{7})!", "5"),
    ("2^{3^{20}}", "5"),
    ("10^{30000000}", "1"),
    ("123456789^{12345678}", "1"),
]
NORMAL = [("x^2+2x+1", "(x+1)^2"), ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}"), ("2\\sqrt{3}", "\\sqrt{12}"),
          ("x^2-1", "(x-1)(x+1)"), ("\\pi", "3.14159")]


def bench_timeouts(timeout_s: float) -> dict:
    calls = []

    def timed(v: MathVerifier, g: str, p: str, label: str) -> None:
        t0 = time.monotonic()
        r = v.verify(g, p)
        calls.append({"case": label, "gold": g, "status": r.status, "equal": r.equal,
                      "verify_s": r.elapsed_s, "wall_s": time.monotonic() - t0})

    with MathVerifier(timeout_s=timeout_s, max_workers=2) as v:
        t0 = time.monotonic()
        v.warmup()
        startup = time.monotonic() - t0
        for g, p in NORMAL:
            timed(v, g, p, "normal")
        for g, p in PATHOLOGICAL:
            timed(v, g, p, "pathological")
        if hasattr(signal, "SIGSTOP"):
            w = v._idle[-1]
            os.kill(w.proc.pid, signal.SIGSTOP)  # frozen like a helper inside C arithmetic
            v._idle.remove(w)
            v._idle.append(w)  # make sure the next call takes the frozen helper
            timed(v, "1", "1", "frozen helper (SIGSTOP)")
        # Several threads at once, pathological and normal mixed, 2 helpers.
        threads = [threading.Thread(target=timed, args=(v, *(PATHOLOGICAL + NORMAL)[i % 11], "threaded"))
                   for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        restarts = v.restarts
    verify_max = max(c["verify_s"] for c in calls)
    single = [c for c in calls if c["case"] != "threaded"]
    return {
        "timeout_s": timeout_s,
        "startup_s": startup,
        "restarts": restarts,
        "max_verify_s": verify_max,
        "max_verify_over_timeout": verify_max / timeout_s,
        "max_wall_single_thread_s": max(c["wall_s"] for c in single),
        "never_blocked_past_timeout": verify_max <= timeout_s + 0.1,  # 0.1 s: pipe I/O slack
        "calls": calls,
    }


# ----------------------------------------------------------------------------- main
def pin_one_core() -> str:
    if hasattr(os, "sched_setaffinity"):
        cpu = sorted(os.sched_getaffinity(0))[0]
        os.sched_setaffinity(0, {cpu})
        return f"pinned to cpu {cpu}"
    return "not pinned (no sched_setaffinity)"


def to_markdown(res: dict) -> str:
    r, t = res["rules"], res["timeouts"]
    lines = [
        "# Reward throughput",
        "",
        f"{res['platform']}; {res['pinning']}. Timings are noisy on a shared machine; the ratios are "
        "taken within the same run.",
        "",
        "## Rule-based matching (one core)",
        "",
        "| what | pairs/s (median) | pairs/s (best) |",
        "|---|---:|---:|",
        f"| `match_answer` rules | {r['rules']['median']:,.0f} | {r['rules']['best']:,.0f} |",
        f"| floor: `strip().lower() ==` | {r['string_compare']['median']:,.0f} | {r['string_compare']['best']:,.0f} |",
    ]
    if r.get("math_verify_in_process"):
        mv = r["math_verify_in_process"]
        lines.append(f"| math-verify in-process (same pairs) | {mv['median']:,.0f} | {mv['best']:,.0f} |")
    target_ok = r["rules"]["median"] >= TARGET_PAIRS_PER_S
    lines += [
        "",
        f"* {r['pairs']:,} unique pairs of every kind; target {TARGET_PAIRS_PER_S:,} pairs/s: "
        f"**{'met' if target_ok else 'NOT met'}**.",
        f"* The rules cost {r['cost_vs_string_compare']:.1f}x a bare string comparison"
        + (f" and are {r['speedup_vs_math_verify']:.0f}x faster than math-verify." if r.get("speedup_vs_math_verify") else "."),
        f"* Agreement with the pairs' labels: {r['agreement_with_labels']:.2%}; decided by the rules "
        f"(no judge needed): {r['decided_fraction']:.2%}.",
        f"* Whole `realx` reward: {res['reward']['episodes_per_s']:,.0f} episodes/s.",
        "",
        "## Math verification time-out",
        "",
        f"Time-out {t['timeout_s']:g} s; helper start-up {t['startup_s']:.2f} s (once); "
        f"helpers killed and replaced: {t['restarts']}.",
        "",
        "| case | input | status | verify s | caller wall s |",
        "|---|---|---|---:|---:|",
    ]
    for c in t["calls"]:
        lines.append(f"| {c['case']} | `{c['gold']}` | {c['status']} | {c['verify_s']:.3f} | {c['wall_s']:.3f} |")
    lines += [
        "",
        f"Longest verification: {t['max_verify_s']:.3f} s = {t['max_verify_over_timeout']:.2f}x the time-out "
        f"(never past it: **{t['never_blocked_past_timeout']}**). Threaded callers' wall time also "
        "includes waiting for one of the 2 helpers.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mv-sample", type=int, default=400, help="pairs for the in-process math-verify baseline")
    ap.add_argument("--episodes", type=int, default=5_000)
    ap.add_argument("--timeout", type=float, default=1.0, help="math-verify time-out (s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)

    # Helpers first (they are separate processes), then pin this process to one core.
    timeouts = bench_timeouts(args.timeout)
    pinning = pin_one_core()
    pairs = make_pairs(args.pairs, args.seed)
    res = {
        "platform": f"{platform.python_implementation()} {platform.python_version()} on {platform.machine()}",
        "pinning": pinning,
        "rules": bench_rules(pairs, args.repeats, args.mv_sample),
        "reward": bench_reward(pairs, args.episodes),
        "timeouts": timeouts,
        "target_pairs_per_s": TARGET_PAIRS_PER_S,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reward_throughput.json").write_text(json.dumps(res, indent=2, default=str))
    md = to_markdown(res)
    (args.out / "reward_throughput.md").write_text(md)
    print(md)
    return res


if __name__ == "__main__":
    main()
