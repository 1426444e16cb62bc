"""Evaluate a model served behind an OpenAI-compatible endpoint, next to the baselines.

Serve a vision-language model first, for example with vLLM::

    vllm serve Qwen/Qwen2.5-VL-7B-Instruct --port 8000 --limit-mm-per-prompt image=12

then::

    python examples/evaluate_openai.py --model Qwen/Qwen2.5-VL-7B-Instruct \\
        --base-url http://127.0.0.1:8000/v1 --limit 50 --baselines

The same run from the command line::

    deepeyes-gym eval --env DeepEyes-RealX-v0 --agent openai --model Qwen/Qwen2.5-VL-7B-Instruct \\
        --base-url http://127.0.0.1:8000/v1 --compare scripted direct --limit 50

Images go to the server as data URLs; generation stops at ``</code>`` / ``</tool_call>`` as in
DeepEyesV2. Hosted APIs work the same way (set ``--api-key-env`` to the variable holding the key).
Every finished episode is saved at once; re-run with ``--resume`` after a crash.
"""

from __future__ import annotations

import argparse
import sys

import requests

from deepeyes_gym.benchmarks import AgentSpec, evaluate


def check_server(base_url: str, api_key_env: str) -> None:
    """Fail early, with a readable message, when nothing answers at ``base_url``."""
    import os

    headers = {"Authorization": f"Bearer {os.environ.get(api_key_env, 'EMPTY')}"}
    try:
        resp = requests.get(base_url.rstrip("/") + "/models", headers=headers, timeout=10)
    except requests.RequestException as exc:
        sys.exit(f"no OpenAI-compatible server at {base_url} ({type(exc).__name__}); start one, e.g. `vllm serve MODEL`")
    if resp.ok:
        served = [m.get("id") for m in resp.json().get("data", [])]
        print(f"server at {base_url} serves: {', '.join(map(str, served)) or '(no list)'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    ap.add_argument("--api-key-env", default="OPENAI_API_KEY")
    ap.add_argument("--env", default="DeepEyes-RealX-v0")
    ap.add_argument("--limit", type=int, default=None, help="a fixed random subset of N tasks")
    ap.add_argument("--concurrency", type=int, default=16, help="episodes (and requests) in flight")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--max-tokens", type=int, default=2048)
    ap.add_argument("--prefill-think", action="store_true",
                    help="pre-fill each assistant turn with <think> (vLLM/SGLang continue_final_message)")
    ap.add_argument("--baselines", action="store_true", help="also run the scripted and direct-answer baselines")
    ap.add_argument("--out", default="runs/openai-eval")
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()

    check_server(args.base_url, args.api_key_env)
    model = AgentSpec("openai", label="model", kwargs=dict(
        model=args.model, base_url=args.base_url, api_key_env=args.api_key_env, temperature=args.temperature,
        max_tokens=args.max_tokens, concurrency=args.concurrency, prefill_think=args.prefill_think,
    ))
    agents = [model] + ([AgentSpec("scripted"), AgentSpec("direct")] if args.baselines else [])
    result = evaluate(args.env, agents, args.out, limit=args.limit, concurrency=args.concurrency,
                      resume=args.resume)
    print(result.table)
    errors = result.summaries["model"]["n_errors"]
    if errors:
        print(f"\n{errors} episodes failed on the server side; see {result.out_dir}/ and re-run with --resume")
    print(f"\nreport: {result.report_path}; trajectories: {result.runs['model'].out_dir / 'viewer.html'}")


if __name__ == "__main__":
    main()
