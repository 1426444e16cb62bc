"""Env ids: ``import deepeyes_gym`` registers them with Gymnasium.

Every id builds a :class:`DeepEyesEnv`; keyword arguments of ``gym.make`` go to the entry point
below, and what it does not consume goes to ``DeepEyesEnv`` (``tools``, ``reward``, ``max_turns``...).
"""

from __future__ import annotations

from typing import Any

from gymnasium.envs.registration import register, registry

__all__ = ["ENV_IDS", "register_envs", "make_realx_env", "make_realx_train_env", "make_benchmark_env"]


def _with_corpus(kwargs: dict[str, Any], corpus_dir: str) -> dict[str, Any]:
    """Point the offline search tools at a suite's corpus unless the user configured them."""
    tk = {k: dict(v) for k, v in (kwargs.pop("tool_kwargs", None) or {}).items()}
    for name in ("search", "image_search"):
        opts = tk.setdefault(name, {})
        if opts.get("backend", "offline") == "offline":
            opts.setdefault("corpus", corpus_dir)
    kwargs["tool_kwargs"] = tk
    return kwargs


def make_realx_env(data_path: str | None = None, *, seed: int = 0, limit: int | None = None, **kwargs: Any):
    """The bundled 300-task RealX-style suite, or real RealX-Bench from ``data_path``."""
    from .core import DeepEyesEnv

    if data_path is not None:
        return make_benchmark_env("RealX-Bench", data_path, limit=limit, **kwargs)
    from .suites.realx import load_suite

    suite = load_suite("eval", seed=seed)
    tasks = suite.tasks[:limit] if limit else suite.tasks
    return DeepEyesEnv(tasks, **_with_corpus(kwargs, suite.corpus_dir))


def make_realx_train_env(*, seed: int = 0, **kwargs: Any):
    """An unbounded seeded stream of RealX-style training tasks (disjoint ids from the eval split)."""
    from .core import DeepEyesEnv
    from .suites.realx import train_stream

    stream = train_stream(seed)
    return DeepEyesEnv(stream, **_with_corpus(kwargs, stream.corpus_dir))


def make_benchmark_env(
    benchmark: str,
    data_path: str | None = None,
    *,
    split: str | None = None,
    limit: int | None = None,
    strict: bool = False,
    **kwargs: Any,
):
    """A benchmark or training set read from disk (VLMEvalKit TSV, DeepEyesV2 parquet, JSONL...)."""
    from .core import DeepEyesEnv
    from .suites.loaders import available_presets, load_benchmark

    if data_path is None:
        raise ValueError(
            f"the {benchmark} env needs data_path=<file or directory> (nothing is downloaded); "
            f"known benchmarks: {', '.join(available_presets())}"
        )
    tasks = list(load_benchmark(benchmark, data_path, split=split, limit=limit, strict=strict))
    if not tasks:
        raise ValueError(f"no usable tasks in {data_path} for {benchmark}")
    return DeepEyesEnv(tasks, **kwargs)


def make_toy_env(n_tasks: int = 12, seed: int = 0, **kwargs: Any):
    from .core import DeepEyesEnv
    from .suites.builtin import toy_tasks

    kwargs.setdefault("tools", ("python",))
    return DeepEyesEnv(toy_tasks(n_tasks, seed), **kwargs)


def make_v1_env(n_tasks: int = 12, seed: int = 0, **kwargs: Any):
    from .core import V1_TOOLS, DeepEyesEnv
    from .suites.builtin import toy_tasks

    kwargs.setdefault("tools", V1_TOOLS)
    return DeepEyesEnv(toy_tasks(n_tasks, seed), **kwargs)


_PERCEPTION = {"tools": ("python",)}
_ALL = {}  # DEFAULT_TOOLS: python, search, image_search

# id -> (entry point, kwargs, needs data_path, description)
_SPECS: dict[str, tuple[str, dict[str, Any], bool, str]] = {
    "DeepEyes-RealX-v0": ("make_realx_env", {}, False,
                          "bundled 300-task RealX-style suite (perception, reasoning, search); data_path= for RealX-Bench"),
    "DeepEyes-RealX-Train-v0": ("make_realx_train_env", {}, False, "unbounded seeded stream of RealX-style training tasks"),
    "DeepEyes-Toy-v0": ("make_toy_env", {}, False, "tiny in-code counting suite with the code tool (tests, smoke runs)"),
    "DeepEyes-V1-Toy-v0": ("make_v1_env", {}, False, "tiny suite with the DeepEyes v1 zoom-in/rotate tools"),
    "DeepEyes-RL-v0": ("make_benchmark_env", {"benchmark": "DeepEyesV2-RL"}, True, "DeepEyesV2 RL parquet (data_path=)"),
    "DeepEyes-VStar-v0": ("make_benchmark_env", {"benchmark": "V*", **_PERCEPTION}, True, "V* Bench TSV (data_path=)"),
    "DeepEyes-HRBench4K-v0": ("make_benchmark_env", {"benchmark": "HRBench-4K", **_PERCEPTION}, True, "HRBench-4K TSV (data_path=)"),
    "DeepEyes-HRBench8K-v0": ("make_benchmark_env", {"benchmark": "HRBench-8K", **_PERCEPTION}, True, "HRBench-8K TSV (data_path=)"),
    "DeepEyes-MMERealWorld-v0": ("make_benchmark_env", {"benchmark": "MME-RealWorld", **_PERCEPTION}, True,
                                 "MME-RealWorld TSV (data_path=)"),
    "DeepEyes-MathVista-v0": ("make_benchmark_env", {"benchmark": "MathVista", **_PERCEPTION}, True, "MathVista TSV (data_path=)"),
    "DeepEyes-MathVerse-v0": ("make_benchmark_env", {"benchmark": "MathVerse", **_PERCEPTION}, True, "MathVerse TSV (data_path=)"),
    "DeepEyes-MMSearch-v0": ("make_benchmark_env", {"benchmark": "MMSearch", **_ALL}, True,
                             "MMSearch (data_path=; search tools need a key or a corpus)"),
}

ENV_IDS: dict[str, str] = {env_id: spec[3] for env_id, spec in _SPECS.items()}
NEEDS_DATA: frozenset[str] = frozenset(env_id for env_id, spec in _SPECS.items() if spec[2])
BENCHMARK_OF: dict[str, str] = {
    env_id: spec[1]["benchmark"] for env_id, spec in _SPECS.items() if "benchmark" in spec[1]
}


def register_envs() -> None:
    for env_id, (entry, kwargs, _, _) in _SPECS.items():
        if env_id not in registry:
            register(id=env_id, entry_point=f"{__name__}:{entry}", kwargs=dict(kwargs))
