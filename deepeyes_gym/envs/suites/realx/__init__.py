"""The bundled RealX-style suite: 300 offline tasks where perception, reasoning and search tools are
needed, the offline search corpus they need, and an unbounded seeded train stream.

    suite = load_suite("eval")          # generated in seconds on first use, then cached
    suite.tasks, suite.corpus_dir        # 300 tasks; docs.jsonl + images.jsonl + images/
    stream = train_stream(seed=0)        # stream[i] is a fresh task, same corpus
    env = DeepEyesEnv(suite.tasks, tool_kwargs=suite.tool_kwargs())

The cache lives under ``$DEEPEYES_GYM_CACHE`` (else ``$XDG_CACHE_HOME/deepeyes_gym``, else
``~/.cache/deepeyes_gym``) in a folder named after the generator (version + source hash) and the
seed; it is rebuilt when missing or incomplete (a file missing or of the wrong size; with
``verify=True`` also a file whose SHA-256 differs from the manifest's).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from ...task import Task
from .corpus import write_corpus
from .generator import FAMILIES, SOURCE, draft_to_task, eval_plan, make_draft, train_pick
from .world import DOMAINS, World, build_world, rng_for

__all__ = [
    "GENERATOR_VERSION",
    "Suite",
    "TrainStream",
    "load_suite",
    "train_stream",
    "cache_root",
    "build_suite_dir",
    "generator_fingerprint",
    "FAMILIES",
    "DOMAINS",
    "SOURCE",
]

GENERATOR_VERSION = "1"  # bump on any change of the generated output
EVAL_SIZE = 300
_MANIFEST = "manifest.json"


@dataclass
class Suite:
    """A finite list of tasks plus the offline corpus their search tools read."""

    name: str
    split: str
    seed: int
    tasks: list[Task]
    corpus_dir: str
    root: str = ""
    build_seconds: float | None = None  # set when this call generated the suite

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, i: int) -> Task:
        return self.tasks[i]

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)

    def tool_kwargs(self) -> dict[str, dict[str, Any]]:
        """Constructor kwargs that point the offline search tools at this suite's corpus."""
        return {"search": {"corpus": self.corpus_dir}, "image_search": {"corpus": self.corpus_dir}}


def cache_root() -> Path:
    env = os.environ.get("DEEPEYES_GYM_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "deepeyes_gym"


@lru_cache(maxsize=1)
def generator_fingerprint() -> str:
    """Version plus a hash of this package's sources: any change to the generator, its wording or
    the solver code inside the reference solutions gives a new cache folder (no stale suites)."""
    h = hashlib.sha256(GENERATOR_VERSION.encode())
    for p in sorted(Path(__file__).parent.glob("*.py")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return f"v{GENERATOR_VERSION}-{h.hexdigest()[:10]}"


def _suite_dir(cache_dir: str | os.PathLike[str] | None, seed: int) -> Path:
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    return root / f"realx-{generator_fingerprint()}-seed{int(seed)}"


def _valid(path: Path, seed: int, *, deep: bool = False) -> bool:
    """A finished build of this generator: manifest present and every file of the right size
    (``deep``: and of the recorded SHA-256, which reads every byte)."""
    try:
        with open(path / _MANIFEST, encoding="utf-8") as f:
            man = json.load(f)
        if man.get("generator") != generator_fingerprint() or man.get("seed") != seed:
            return False
        for rel, (size, digest) in man["files"].items():
            p = path / rel
            if p.stat().st_size != size or (deep and _sha256(p) != digest):
                return False
        return True
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def build_suite_dir(out_dir: str | os.PathLike[str], seed: int = 0) -> dict[str, Any]:
    """Generate the eval split and the corpus of ``seed`` into ``out_dir`` (no caching logic)."""
    out = Path(out_dir)
    world = build_world(seed)
    write_corpus(world, str(out / "corpus"))
    img_dir = out / "eval" / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for i, (family, variant, domain) in enumerate(eval_plan(seed)):
        task_id = f"realx-{i:03d}"
        d = make_draft(world, family, variant, domain, "eval", rng_for(seed, "eval", i))
        if d.jpeg is not None:
            rel = f"eval/images/{task_id}.jpg"
            (out / rel).write_bytes(d.jpeg)
        else:
            rel = f"eval/images/{task_id}.png"
            d.image.save(out / rel, "PNG", compress_level=1)
        t = draft_to_task(d, task_id, [rel])
        records.append(_task_record(t))
    with open(out / "eval" / "tasks.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")
    files = {}
    for p in sorted(out.rglob("*")):
        if p.is_file() and p.name != _MANIFEST:
            files[p.relative_to(out).as_posix()] = [p.stat().st_size, _sha256(p)]
    manifest = {"generator": generator_fingerprint(), "generator_version": GENERATOR_VERSION, "seed": seed,
                "n_eval": len(records), "files": files}
    with open(out / _MANIFEST, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    return manifest


def _task_record(t: Task) -> dict[str, Any]:
    return {
        "id": t.id, "question": t.question, "answer": t.answer, "images": list(t.images),
        "answer_kind": t.answer_kind, "options": dict(t.options) if t.options else None, "domain": t.domain,
        "capabilities": sorted(t.capabilities), "reference_solution": list(t.reference_solution or []),
        "source": t.source, "metadata": t.metadata,
    }


def _ensure_built(cache_dir: str | os.PathLike[str] | None, seed: int, verify: bool = False) -> tuple[Path, float | None]:
    path = _suite_dir(cache_dir, seed)
    if _valid(path, seed, deep=verify):
        return path, None
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a cache is readable like any other folder
    try:
        build_suite_dir(tmp, seed)
        if path.exists():  # stale or corrupt (or a concurrent build just finished)
            if _valid(path, seed):
                return path, None
            shutil.rmtree(path, ignore_errors=True)
        try:
            os.rename(tmp, path)
        except OSError:  # another process won the race with a complete build
            if not _valid(path, seed):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path, time.perf_counter() - start


def load_suite(split: str = "eval", *, cache_dir: str | os.PathLike[str] | None = None, seed: int = 0,
               n_train: int = 256, verify: bool = False) -> Suite:
    """The RealX-style suite of ``seed``: ``"eval"`` (300 tasks) or ``"train"`` (the first
    ``n_train`` tasks of :func:`train_stream`). Generated on first use and cached on disk;
    ``verify=True`` also checks every cached file's SHA-256 (not only its size) before use."""
    if split not in ("eval", "train"):
        raise ValueError(f"unknown split {split!r}; use 'eval' or 'train' (or train_stream() for an unbounded one)")
    path, built = _ensure_built(cache_dir, seed, verify)
    corpus = str(path / "corpus")
    if split == "train":
        stream = TrainStream(seed=seed, world_seed=seed, corpus_dir=corpus)
        return Suite("realx-train", "train", seed, [stream[i] for i in range(int(n_train))], corpus, str(path), built)
    tasks = []
    with open(path / "eval" / "tasks.jsonl", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            r["images"] = [str(path / rel) for rel in r["images"]]
            tasks.append(Task(**r))
    if len(tasks) != EVAL_SIZE:
        raise RuntimeError(f"the cached suite at {path} holds {len(tasks)} tasks, expected {EVAL_SIZE}")
    return Suite("realx", "eval", seed, tasks, corpus, str(path), built)


@dataclass
class TrainStream:
    """An unbounded, seeded task source: ``stream[i]`` is the same task for the same (seed, i).

    Tasks use train-only entities of the world ``world_seed`` (disjoint from the eval split's) whose
    facts and emblems are in the same corpus as the eval suite. Images are kept in memory.
    """

    seed: int = 0
    world_seed: int = 0
    corpus_dir: str = ""
    _world: World | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._world = build_world(self.world_seed)

    def __getitem__(self, index: int) -> Task:
        index = int(index)
        if index < 0:
            raise IndexError("the train stream has no negative indices")
        family, variant, domain, rng = train_pick(self.seed, index)
        d = make_draft(self._world, family, variant, domain, "train", rng)
        return draft_to_task(d, f"realx-train-s{self.seed}-{index}", [d.image_ref()])

    def __iter__(self) -> Iterator[Task]:
        i = 0
        while True:
            yield self[i]
            i += 1

    def tool_kwargs(self) -> dict[str, dict[str, Any]]:
        return {"search": {"corpus": self.corpus_dir}, "image_search": {"corpus": self.corpus_dir}}


def train_stream(seed: int = 0, *, world_seed: int = 0, cache_dir: str | os.PathLike[str] | None = None) -> TrainStream:
    """The seeded train stream; its corpus (shared with the eval suite of ``world_seed``) is built
    and cached on first use."""
    path, _ = _ensure_built(cache_dir, world_seed)
    return TrainStream(seed=seed, world_seed=world_seed, corpus_dir=str(path / "corpus"))
