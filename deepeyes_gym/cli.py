"""The ``deepeyes-gym`` command line.

Subcommands are registered as :class:`Command` objects (a name, help text, an argument
``configure`` function and a ``run`` function), so new ones — ``sft``, ``train``, ``curate`` —
join with one ``register_command`` call and no change to the parser code. Heavy imports happen
inside ``run`` so ``deepeyes-gym --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

__all__ = ["Command", "register_command", "build_parser", "main", "COMMANDS"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_ABORTED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
_MODEL_AGENTS = ("openai", "hf", "vllm")  # agents that take --model (a served model name / a local dir)


@dataclass(frozen=True)
class Command:
    """One subcommand: ``configure(parser)`` adds its arguments, ``run(args)`` returns an exit code."""

    name: str
    help: str
    description: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    epilog: str = ""


COMMANDS: dict[str, Command] = {}


def register_command(command: Command, *, overwrite: bool = False) -> None:
    """Add a subcommand (e.g. from a trainer module)."""
    if command.name in COMMANDS and not overwrite:
        raise ValueError(f"command {command.name!r} is already registered")
    COMMANDS[command.name] = command


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _key_values(items: Sequence[str] | None, what: str) -> list[tuple[str, Any]]:
    out = []
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: {what} must look like KEY=VALUE, got {item!r}")
        out.append((key.strip(), _parse_value(value)))
    return out


# ====================================================================== envs
def _envs_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON object id -> description")


def _envs_run(args: argparse.Namespace) -> int:
    import deepeyes_gym

    ids = dict(sorted(deepeyes_gym.ENV_IDS.items()))
    if args.json:
        print(json.dumps(ids, indent=2))
        return EXIT_OK
    width = max((len(k) for k in ids), default=0)
    for env_id, doc in ids.items():
        print(f"{env_id:<{width}}  {doc}")
    return EXIT_OK


# ====================================================================== agents
def _agents_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON object name -> description")


def _agents_run(args: argparse.Namespace) -> int:
    from .agents import agent_description, available_agents

    names = {n: agent_description(n) for n in available_agents()}
    if args.json:
        print(json.dumps(names, indent=2))
        return EXIT_OK
    width = max(len(n) for n in names)
    for n, doc in names.items():
        print(f"{n:<{width}}  {doc}")
    return EXIT_OK


# ====================================================================== eval
_EVAL_EPILOG = """\
examples:
  # the scripted baseline and the no-tool baseline on the bundled RealX-style suite, side by side
  deepeyes-gym eval --env DeepEyes-RealX-v0 --agent scripted --agent direct

  # a model served by `vllm serve Qwen/Qwen2.5-VL-7B-Instruct` (any OpenAI-compatible endpoint)
  deepeyes-gym eval --env DeepEyes-RealX-v0 --agent openai --model Qwen/Qwen2.5-VL-7B-Instruct \\
      --base-url http://127.0.0.1:8000/v1 --concurrency 32 --out runs/qwen7b

  # continue a crashed or interrupted run: finished episodes are kept, the rest are run
  deepeyes-gym eval --env DeepEyes-RealX-v0 --agent openai --model ... --out runs/qwen7b --resume

  # two served models compared: AGENT@LABEL names each, --agent-arg LABEL.KEY=VALUE configures it
  deepeyes-gym eval --env DeepEyes-RealX-v0 --agent openai@a --agent openai@b \\
      --agent-arg a.model=model-a --agent-arg b.model=model-b

outputs (in --out; with several agents, one folder per agent plus a side-by-side report.md):
  episodes.jsonl   one line per finished episode (turns, tools, latency, reward breakdown)
  summary.json     accuracy overall / per capability / per domain with 95% bootstrap CIs,
                   tool-use rates, turns, latency percentiles
  report.md        Markdown tables, next to DeepEyesV2's published numbers where they exist
  *.png            accuracy by capability, tool use by category, turns histogram
  viewer.html      self-contained trajectory viewer (open it in a browser)
"""


def _eval_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", required=True, metavar="ID", help="env id (see `deepeyes-gym envs`)")
    p.add_argument("--agent", action="append", required=True, metavar="NAME[@LABEL]",
                   help="agent to evaluate (see `deepeyes-gym agents`); repeat to compare several")
    p.add_argument("--compare", nargs="+", default=[], metavar="NAME[@LABEL]",
                   help="more agents to run on the same tasks and put side by side")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="evaluate a fixed random subset of N tasks (default: the whole suite)")
    p.add_argument("--samples", type=int, default=1, metavar="S", help="episodes per task")
    p.add_argument("--concurrency", type=int, default=8, metavar="K", help="episodes run at once")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (default: runs/<env>-<agents>-<time>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out: skip finished episodes, retry errored ones")
    p.add_argument("--seed", type=int, default=0, help="seed for agents, episodes and bootstrap CIs")
    p.add_argument("--env-arg", action="append", metavar="KEY=VALUE",
                   help="env constructor argument (VALUE parsed as JSON when it is JSON), e.g. data_path=/data/realx")
    p.add_argument("--agent-arg", action="append", metavar="[LABEL.]KEY=VALUE",
                   help="agent constructor argument; with LABEL. only for that agent")
    p.add_argument("--model", default=None, help="shortcut for --agent-arg model=... (openai: a served model name; hf: a local model dir)")
    p.add_argument("--base-url", default=None, help="shortcut for --agent-arg base_url=... (openai agents)")
    p.add_argument("--no-images", action="store_true", help="do not save images (the viewer shows none)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-viewer", action="store_true", help="skip viewer.html")
    p.add_argument("--image-budget-mb", type=float, default=40.0,
                   help="most image bytes embedded in viewer.html (wrong episodes first)")
    p.add_argument("--max-consecutive-errors", type=int, default=25,
                   help="stop when this many episodes in a row fail (server down); 0 never stops")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary JSON instead of the table")


def _agent_specs(args: argparse.Namespace):
    from .agents import available_agents
    from .benchmarks.evaluate import AgentSpec

    specs = []
    for item in list(args.agent) + list(args.compare):
        name, _, label = item.partition("@")
        if name not in available_agents():
            raise SystemExit(f"error: unknown agent {name!r}; available: {', '.join(available_agents())}")
        specs.append(AgentSpec(name=name, label=label or None))
    labels = [s.tag for s in specs]
    dupes = {t for t in labels if labels.count(t) > 1}
    if dupes:
        raise SystemExit(f"error: agent {sorted(dupes)} given twice; name them NAME@LABEL")
    pairs = _key_values(args.agent_arg, "--agent-arg")
    for spec in specs:
        if spec.name in _MODEL_AGENTS:
            if args.model:
                spec.kwargs["model"] = args.model
            if spec.name == "openai" and args.base_url:
                spec.kwargs["base_url"] = args.base_url
    for key, value in pairs:
        target, dot, short = key.partition(".")
        if dot and target in labels + [s.name for s in specs]:
            for spec in specs:
                if target in (spec.tag, spec.name):
                    spec.kwargs[short] = value
        else:
            for spec in specs:
                spec.kwargs[key] = value
    for spec in specs:
        if spec.name in _MODEL_AGENTS and "model" not in spec.kwargs:
            raise SystemExit(f"error: the {spec.name} agent {spec.tag!r} needs --model NAME "
                             f"(or --agent-arg {spec.tag}.model=NAME)")
    return specs


def _eval_run(args: argparse.Namespace) -> int:
    import deepeyes_gym
    from .agents import AgentUnavailable
    from .benchmarks.evaluate import evaluate
    from .benchmarks.runner import RunAborted

    if args.env not in deepeyes_gym.ENV_IDS:
        print(f"error: unknown env id {args.env!r}; available: {', '.join(sorted(deepeyes_gym.ENV_IDS))}",
              file=sys.stderr)
        return EXIT_USAGE
    specs = _agent_specs(args)
    if args.resume and not args.out:
        print("error: --resume needs --out DIR (the folder of the run to continue)", file=sys.stderr)
        return EXIT_USAGE
    out = args.out or f"runs/{args.env}-{'-'.join(s.tag for s in specs)}-{time.strftime('%Y%m%d-%H%M%S')}"
    t0 = time.perf_counter()
    try:
        result = evaluate(
            args.env, specs, out, limit=args.limit, samples=args.samples, concurrency=args.concurrency,
            resume=args.resume, seed=args.seed, env_kwargs=dict(_key_values(args.env_arg, "--env-arg")),
            progress=not args.no_progress, save_images=not args.no_images, plots=not args.no_plots,
            viewer=not args.no_viewer, image_budget_mb=args.image_budget_mb,
            max_consecutive_errors=args.max_consecutive_errors,
        )
    except AgentUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RunAborted as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ABORTED
    except (ValueError, TypeError, KeyError) as exc:  # bad settings for the env or an agent
        if args.verbose:
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg} (run with -v for the traceback)", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished episodes are saved; continue with\n  deepeyes-gym eval "
              f"{' '.join(_reconstruct(args))} --out {out} --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.json:
        print(json.dumps(result.summaries if len(result.summaries) > 1 else next(iter(result.summaries.values())),
                         indent=2))
        return EXIT_OK
    print(result.table)
    print()
    for label, run in result.runs.items():
        s = result.summaries[label]
        print(f"{label}: {s['n_episodes']} episodes ({run.n_new} run now, {run.n_skipped} resumed), "
              f"{s['n_errors']} errored -> {run.out_dir}/")
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"report: {result.report_path}   ({time.perf_counter() - t0:.1f} s)")
    return EXIT_OK


def _reconstruct(args: argparse.Namespace) -> list[str]:
    parts = ["--env", args.env]
    for a in list(args.agent) + list(args.compare):
        parts += ["--agent", a]
    for flag, value in (("--limit", args.limit), ("--model", args.model), ("--base-url", args.base_url)):
        if value is not None:
            parts += [flag, str(value)]
    if args.samples != 1:
        parts += ["--samples", str(args.samples)]
    for kv in args.env_arg or ():
        parts += ["--env-arg", kv]
    for kv in args.agent_arg or ():
        parts += ["--agent-arg", kv]
    return parts


# ====================================================================== report
def _report_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="folder of one agent's run (holds episodes.jsonl)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-viewer", action="store_true", help="skip viewer.html")
    p.add_argument("--image-budget-mb", type=float, default=40.0, help="most image bytes embedded in viewer.html")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")


def _report_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .benchmarks.evaluate import write_artifacts
    from .benchmarks.report import comparison_table
    from .benchmarks.runner import RunResult, load_run
    from .benchmarks.summary import summarize

    run_dir = Path(args.run_dir)
    meta, records = load_run(run_dir)
    if not records:
        print(f"error: no episodes in {run_dir / 'episodes.jsonl'}", file=sys.stderr)
        return EXIT_USAGE
    summary = summarize(records, seed=args.seed)
    run = RunResult(out_dir=run_dir, records=records, n_new=0, n_skipped=len(records), wall_s=0.0, meta=meta)
    for w in write_artifacts(run, summary, plots=not args.no_plots, viewer=not args.no_viewer,
                             image_budget_mb=args.image_budget_mb):
        print(f"warning: {w}", file=sys.stderr)
    print(comparison_table({summary.get("agent") or meta.get("agent", "agent"): summary}, meta=meta))
    print(f"\nreport: {run_dir / 'report.md'}")
    return EXIT_OK


# ====================================================================== index
def _index_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("corpus", metavar="CORPUS_DIR",
                   help="folder with docs.jsonl ({id,title,url,text,date?} per line) and/or images.jsonl "
                        "({id,path,title,url} per line) + the image files")
    p.add_argument("--index-dir", default=None,
                   help="where to write the index (default: CORPUS_DIR/.index, or the user cache if read-only)")
    p.add_argument("--text-only", action="store_true", help="build only the text (sqlite FTS5) index")
    p.add_argument("--images-only", action="store_true", help="build only the image (perceptual hash) index")
    p.add_argument("--query", action="append", default=[], metavar="TEXT",
                   help="run a text query afterwards and print the results as the model sees them")
    p.add_argument("--image", action="append", default=[], metavar="PATH",
                   help="run a reverse image search with this image afterwards")
    p.add_argument("--top-k", type=int, default=5)


def _index_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    try:
        from .envs.search.corpus import CorpusError
        from .envs.search.offline import OfflineImageIndex, OfflineTextIndex
    except ImportError as exc:
        print(f"error: the offline search backend is not available in this install ({exc})", file=sys.stderr)
        return EXIT_ERROR
    corpus = Path(args.corpus)
    has_docs, has_images = (corpus / "docs.jsonl").exists(), (corpus / "images.jsonl").exists()
    if not corpus.is_dir() or not (has_docs or has_images):
        print(f"error: {corpus} is not a corpus folder: it needs docs.jsonl and/or images.jsonl", file=sys.stderr)
        return EXIT_USAGE
    want_text = has_docs and not args.images_only
    want_images = has_images and not args.text_only
    text = images = None
    try:
        if want_text:
            text = OfflineTextIndex(corpus, index_dir=args.index_dir).open()
            built = f"built in {text.build_seconds:.2f} s" if text.build_seconds is not None else "up to date"
            print(f"text index:  {text.n_docs} documents, {built} -> {text.path}")
        if want_images:
            images = OfflineImageIndex(corpus, index_dir=args.index_dir).open()
            built = f"built in {images.build_seconds:.2f} s" if images.build_seconds is not None else "up to date"
            skipped = f", {len(images.skipped)} unreadable skipped" if images.skipped else ""
            print(f"image index: {images.n_images} images{skipped}, {built} -> {images.path}")
        for q in args.query:
            if text is None:
                print("error: --query needs a text index (docs.jsonl)", file=sys.stderr)
                return EXIT_USAGE
            _print_text_query(text, q, args.top_k)
        for path in args.image:
            if images is None:
                print("error: --image needs an image index (images.jsonl)", file=sys.stderr)
                return EXIT_USAGE
            _print_image_query(images, path, args.top_k)
    except CorpusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        for index in (text, images):
            if index is not None:
                index.close()
    return EXIT_OK


def _print_text_query(index: Any, query: str, top_k: int) -> None:
    from .envs.search.base import SearchError, render_error, render_text_results, sanitize_query

    try:
        q = sanitize_query(query)
        t0 = time.perf_counter()
        result = index.search(q, top_k=top_k)
        ms = 1000 * (time.perf_counter() - t0)
        print(f"\n# query {query!r} ({ms:.1f} ms)\n{render_text_results(q, result.hits)}")
    except SearchError as exc:
        print(f"\n# query {query!r}\n{render_error(exc.kind, exc.message)}")


def _print_image_query(index: Any, path: str, top_k: int) -> None:
    from pathlib import Path

    from .envs.search.base import ImageQuery, SearchError, checked_image

    try:
        img = checked_image(path)
        t0 = time.perf_counter()
        result = index.search_image(ImageQuery(image=img, task_id=Path(path).stem), top_k=top_k)
        ms = 1000 * (time.perf_counter() - t0)
        print(f"\n# image {path} ({ms:.1f} ms)")
        for i, hit in enumerate(result.hits, 1):
            print(f"{i}. [{hit.title}]({hit.url})  id={hit.image_id} score={hit.score}")
    except SearchError as exc:
        print(f"\n# image {path}\nerror ({exc.kind}): {exc.message}")


# ====================================================================== sandbox-check
def _sandbox_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--isolation", default="auto", choices=("auto", "bwrap", "unshare", "rlimits"),
                   help="the level to try (auto: the strongest that works here)")
    p.add_argument("--strict", action="store_true",
                   help="exit with status 1 unless the strongest level (bubblewrap) is in force")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _sandbox_run(args: argparse.Namespace) -> int:
    import dataclasses
    import warnings

    try:
        from .envs.sandbox import SandboxConfig, SandboxError, isolation_report
    except ImportError as exc:
        print(f"error: the code sandbox is not available in this install ({exc})", file=sys.stderr)
        return EXIT_ERROR
    with warnings.catch_warnings():  # the report itself says what the warning would
        warnings.simplefilter("ignore")
        logging.getLogger("deepeyes_gym.envs.sandbox").setLevel(logging.ERROR)
        try:
            report = isolation_report(SandboxConfig(isolation=args.isolation))
        except (SandboxError, OSError, ValueError) as exc:
            print(f"error: the sandbox could not start at isolation={args.isolation}: {exc}", file=sys.stderr)
            return EXIT_ERROR
    if args.json:
        data = dataclasses.asdict(report)
        data["is_strongest"] = report.is_strongest
        print(json.dumps(data, indent=2, default=str))
    else:
        print(report.format())
    return EXIT_ERROR if args.strict and not report.is_strongest else EXIT_OK


# ====================================================================== rescore
def _rescore_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="an eval output folder (or a folder of them, one per agent)")
    p.add_argument("--reward", default="realx", help="a reward preset (realx, deepeyesv2, dapo, ...)")
    p.add_argument("--reward-arg", action="append", metavar="KEY=VALUE", help="keyword argument of the preset")
    p.add_argument("--out", default=None, help="output JSONL (default: RUN/rescored-PRESET.jsonl per run)")


def _rescore_run(args: argparse.Namespace) -> int:
    """Score stored episodes again with another reward: no model, no tools, no env."""
    from pathlib import Path

    from .benchmarks.runner import EPISODE_STORE_DIR
    from .envs.episode_io import EpisodeStore
    from .envs.rewards import resolve_reward

    root = Path(args.run_dir)
    stores = [root / EPISODE_STORE_DIR] if (root / EPISODE_STORE_DIR).is_dir() else sorted(
        d / EPISODE_STORE_DIR for d in root.iterdir() if (d / EPISODE_STORE_DIR).is_dir()) if root.is_dir() else []
    if not stores:
        print(f"error: no stored episodes under {root} (eval writes them to RUN/{EPISODE_STORE_DIR}/)", file=sys.stderr)
        return EXIT_USAGE
    try:
        reward_fn = resolve_reward(args.reward, **dict(_key_values(args.reward_arg, "--reward-arg")))
    except (KeyError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"| run | episodes | stored reward | {args.reward} reward | {args.reward} accuracy |")
    print("|---|---:|---:|---:|---:|")
    for store_dir in stores:
        latest: dict[Any, Any] = {}
        for key, ep, _ in EpisodeStore(store_dir):
            latest[key] = ep  # a retried episode: the last copy counts
        rows = []
        for key, ep in latest.items():
            res = reward_fn(ep)
            rows.append({"key": key, "task_id": ep.task.id, "stored_reward": ep.reward, "reward": float(res.value),
                         "accuracy": float(res.breakdown.get("accuracy", 0.0)), "breakdown": res.breakdown})
        out = Path(args.out) if args.out and len(stores) == 1 else store_dir.parent / f"rescored-{args.reward}.jsonl"
        with open(out, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        n = max(1, len(rows))
        old = sum(r["stored_reward"] or 0.0 for r in rows) / n
        new = sum(r["reward"] for r in rows) / n
        acc = sum(r["accuracy"] for r in rows) / n
        print(f"| {store_dir.parent} | {len(rows)} | {old:.4f} | {new:.4f} | {acc:.4f} |")
    return EXIT_OK


# ====================================================================== train, curate, plot
_TRAIN_EPILOG = """examples:
  deepeyes-gym train sft --config examples/configs/sft_tiny.yaml
  deepeyes-gym train rl --config examples/configs/rl_cpu.yaml --set steps=4 --set out_dir=runs/rl
  deepeyes-gym train rl --config FILE --set resume=true      # continue from the latest checkpoint
"""


def _train_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("stage", choices=("sft", "rl"), help="sft: cold-start SFT; rl: DAPO (or another algorithm)")
    p.add_argument("--config", default=None, help="YAML file of the stage's config dataclass")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (dotted keys, YAML values); repeatable")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def _train_run(args: argparse.Namespace) -> int:
    try:
        from .trainers.config import config_to_dict, load_config
        if args.stage == "sft":
            from .trainers.sft import SFTConfig as cls, train_sft as train
        else:
            from .trainers.rl import RLConfig as cls, train_rl as train
    except ImportError as exc:
        print(f"error: training needs the 'train' extra (torch first: pip install torch==2.13.0): {exc}",
              file=sys.stderr)
        return EXIT_ERROR
    try:
        cfg = load_config(cls, args.config, args.overrides)
    except (ValueError, TypeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.print_config:
        print(json.dumps(config_to_dict(cfg), indent=2, default=str))
        return EXIT_OK
    result = train(cfg)
    print(f"done: {result.steps} steps; outputs in {result.out_dir}")
    return EXIT_OK


def _curate_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML file of CurateConfig")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field (e.g. --set base_agent=hf --set base_agent_kwargs.model=DIR)")


def _curate_run(args: argparse.Namespace) -> int:
    from .trainers.config import load_config
    from .trainers.curate import CurateConfig, curate

    try:
        cfg = load_config(CurateConfig, args.config, args.overrides)
    except (ValueError, TypeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    res = curate(cfg)
    for k, v in res.counts.items():
        print(f"{k:>32}: {v}")
    print(f"SFT pool: {res.out_dir / 'sft'}; RL pool: {res.out_dir / 'rl_tasks.json'}")
    return EXIT_OK


def _plot_configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a training run folder (holds metrics.jsonl)")
    p.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/curves.png)")


def _plot_run(args: argparse.Namespace) -> int:
    from .trainers.plots import plot_run

    try:
        path = plot_run(args.run_dir, args.out)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(path)
    return EXIT_OK


# ====================================================================== registry and entry point
register_command(Command(
    "envs", "list the registered env ids",
    "List every env id `gym.make` accepts after `import deepeyes_gym`, with a one-line description.",
    _envs_configure, _envs_run))
register_command(Command(
    "agents", "list the agents `eval --agent` accepts",
    "List the registered agents. Constructor settings are passed with `eval --agent-arg KEY=VALUE`.",
    _agents_configure, _agents_run))
register_command(Command(
    "eval", "run agents on an env id and write JSONL, summary, report, plots and a trajectory viewer",
    "Evaluate one or more agents on every task of an env (or a subset), with many episodes at once.\n"
    "Each finished episode is appended to episodes.jsonl as it ends, so a crash or Ctrl-C loses\n"
    "nothing: re-run with --resume to finish. The side-by-side table is printed at the end.",
    _eval_configure, _eval_run, _EVAL_EPILOG))
register_command(Command(
    "report", "re-write summary, report, plots and viewer of a finished (or partial) run folder",
    "Summarise episodes.jsonl of a run folder again (e.g. after a crash, or with a newer version)\n"
    "and write summary.json, report.md, the PNGs and viewer.html next to it.",
    _report_configure, _report_run))
register_command(Command(
    "index", "build the offline search indexes of a corpus folder",
    "Build (or check) the offline text index (sqlite FTS5, BM25) and image index (perceptual\n"
    "hashes) of a corpus folder, as used by the search and image_search tools. Indexes are cached\n"
    "and rebuilt only when the corpus files change. --query/--image try them out.",
    _index_configure, _index_run))
register_command(Command(
    "sandbox-check", "report what isolation the code sandbox gets on this machine",
    "Probe the isolation the Python code tool can use here (bubblewrap, unshare, or a plain\n"
    "subprocess with rlimits) and the limits it can enforce, and print what is missing.",
    _sandbox_configure, _sandbox_run))
register_command(Command(
    "train", "train a policy: cold-start SFT or RL (DAPO, GRPO, Dr.GRPO, PPO-clip, RLOO, REINFORCE++)",
    "Run a training stage from a YAML config (a dataclass: every field has a docstring; see\n"
    "--print-config). Checkpoints, metrics.jsonl and the final model go to the config's out_dir.",
    _train_configure, _train_run, _TRAIN_EPILOG))
register_command(Command(
    "curate", "pick SFT and RL tasks: the base model rarely solves them, a tool-using reference does",
    "Sample the base agent k times per task, keep tasks it solves at most 2 of 8 times where the\n"
    "reference agent solves them, split them into an SFT pool (stored episodes) and an RL pool.",
    _curate_configure, _curate_run))
register_command(Command(
    "plot", "draw the learning curves of a training run (PNG)",
    "Plot reward, accuracy, tool use, entropy, KL, clip fractions, mismatch ... against the step.",
    _plot_configure, _plot_run))
register_command(Command(
    "rescore", "score the stored episodes of a run again with another reward, without the model",
    "Read the lossless episodes an eval stored (RUN/episodes/), apply a reward preset to each, and\n"
    "write RUN/rescored-PRESET.jsonl with a table of the old and new mean reward.",
    _rescore_configure, _rescore_run))


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="deepeyes-gym",
        description="DeepEyesV2-style agentic multimodal reasoning as Gymnasium environments: "
                    "list envs, evaluate agents, build search indexes, check the sandbox.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"deepeyes-gym {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.description, epilog=cmd.epilog,
                           formatter_class=_Formatter)
        cmd.configure(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return EXIT_USAGE
    logging.basicConfig(level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args._run(args) or 0)
    except SystemExit as exc:  # argument errors raised inside run()
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return EXIT_USAGE
        raise
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
