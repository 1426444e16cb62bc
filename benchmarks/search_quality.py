"""Search quality and latency of the offline search backends.

Measures, on the bundled RealX-style suite (default) or on a generated synthetic corpus
(``--synthetic``, also the fallback when the suite is not installed):

* recall@5 of the gold document for the suite's text-search questions (``search_query`` →
  ``gold_doc_ids``) and of the gold image for its image-search questions (distorted input image →
  ``gold_image_id``);
* query latency (p50/p90) of the FTS5 text index and of the perceptual-hash image index, each
  against a baseline measured in the same run: a pure-Python term-overlap scan over all docs, and
  a single whole-image pHash without the crop grid (which also shows what the grid buys in recall);
* the latency of a full tool call (search + rendering + result images).

Writes ``search_quality.json`` and ``search_quality.md`` to ``--out`` (default benchmarks/results).

    python benchmarks/search_quality.py                # bundled suite
    python benchmarks/search_quality.py --synthetic    # synthetic corpus
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deepeyes_gym.envs.search.base import ImageQuery  # noqa: E402
from deepeyes_gym.envs.search.corpus import iter_docs  # noqa: E402
from deepeyes_gym.envs.search.offline import OfflineSearch, query_terms  # noqa: E402
from deepeyes_gym.envs.search.perceptual import hamming, query_hash  # noqa: E402
from deepeyes_gym.envs.search.synthetic import distort_image, make_synthetic_corpus  # noqa: E402
from deepeyes_gym.envs.task import load_image  # noqa: E402
from deepeyes_gym.envs.tools.base import ToolContext  # noqa: E402
from deepeyes_gym.envs.tools.search import ImageSearchTool, TextSearchTool  # noqa: E402

K = 5


@dataclass
class Workload:
    source: str
    corpus_dir: Path
    text_cases: list[tuple[str, set[str]]]  # (query, gold doc ids)
    image_cases: list[tuple[Any, str]]  # (query image, gold image id)
    extra_text_cases: list[tuple[str, set[str]]] = field(default_factory=list)  # follow-up queries


def suite_workload(split: str) -> Workload | None:
    try:
        from deepeyes_gym.envs.suites.realx import load_suite  # type: ignore[import-not-found]
    except ImportError as exc:
        print(f"bundled suite unavailable ({exc}); using the synthetic corpus")
        return None
    suite = load_suite(split=split)
    text_cases, extra_cases, image_cases = [], [], []
    for task in suite.tasks:
        md = task.metadata or {}
        if md.get("search_query") and md.get("gold_doc_ids"):
            gold = {str(d) for d in md["gold_doc_ids"]}
            text_cases.append((str(md["search_query"]), gold))
            extra_cases += [(str(q), gold) for q in md.get("search_queries") or [] if q != md["search_query"]]
        if md.get("gold_image_id") and task.images:
            image_cases.append((load_image(task.images[0]), str(md["gold_image_id"])))
    return Workload(f"realx:{split}", Path(suite.corpus_dir), text_cases, image_cases, extra_cases)


def synthetic_workload(n_docs: int, n_images: int, n_queries: int, seed: int, workdir: Path) -> Workload:
    corpus = make_synthetic_corpus(workdir / "corpus", n_docs=n_docs, n_images=n_images, seed=seed)
    rng = random.Random(seed + 1)
    text = rng.sample(corpus.text_queries, min(n_queries, len(corpus.text_queries)))
    from PIL import Image

    picks = rng.sample(corpus.image_ids, min(n_queries, len(corpus.image_ids)))
    images = []
    for img_id in picks:
        with Image.open(corpus.root / "images" / f"{img_id}.jpg") as raw:
            images.append((distort_image(raw.convert("RGB"), rng), img_id))
    return Workload(f"synthetic:{n_docs}docs/{n_images}images", corpus.root,
                    [(q, {d}) for q, d in text], images)


@dataclass
class Samples:
    """Latencies in ms: wall clock, and this process's CPU time (robust on a shared machine)."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def p(self, q: float, clock: str = "wall") -> float:
        values = self.wall if clock == "wall" else self.cpu
        return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def timed(fn: Callable[[], Any], repeat: int, samples: Samples) -> Any:
    out = None
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        samples.cpu.append((time.process_time() - c0) * 1000)
        samples.wall.append((time.perf_counter() - w0) * 1000)
    return out


class ScanBaseline:
    """Pure-Python text retrieval: score every doc by IDF-weighted term overlap."""

    def __init__(self, corpus: Path) -> None:
        self.docs = [(d.id, Counter(query_terms(f"{d.title} {d.text}", max_terms=10**9))) for d in iter_docs(corpus)]
        df: Counter[str] = Counter()
        for _, c in self.docs:
            df.update(c.keys())
        n = max(len(self.docs), 1)
        self.idf = {t: math.log(1 + n / f) for t, f in df.items()}

    def search(self, query: str, k: int = K) -> list[str]:
        terms = query_terms(query)
        scored = [(sum(self.idf.get(t, 0.0) for t in terms if t in c), i) for i, (_, c) in enumerate(self.docs)]
        scored.sort(key=lambda s: (-s[0], s[1]))
        return [self.docs[i][0] for _, i in scored[:k]]


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = tempfile.TemporaryDirectory(prefix="search-bench-")
    work = None if args.synthetic else suite_workload(args.split)
    if work is None or not (work.text_cases or work.image_cases):
        if work is not None:
            print("the suite has no search tasks with gold ids; using the synthetic corpus")
        work = synthetic_workload(args.n_docs, args.n_images, args.n_queries, args.seed, Path(tmp.name))
    index_dir = Path(tmp.name) / "index"  # always a fresh build, so build time is measured
    backend = OfflineSearch(work.corpus_dir, index_dir=index_dir)
    backend.build()
    res: dict[str, Any] = {
        "source": work.source,
        "n_docs": backend.text.n_docs,
        "n_images": backend.images.n_images,
        "build_s": {"text": backend.text.build_seconds, "images": backend.images.build_seconds},
        "machine": platform.platform(),
        "python": platform.python_version(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }

    # ---- text
    if work.text_cases:
        scan = ScanBaseline(work.corpus_dir)
        hits = base_hits = 0
        lat, base_lat = Samples(), Samples()
        for query, gold in work.text_cases:
            result = timed(lambda: backend.search(query, top_k=K), args.repeat, lat)
            hits += bool(gold & {h.doc_id for h in result.hits})
            ids = timed(lambda: scan.search(query), 1, base_lat)
            base_hits += bool(gold & set(ids))
        n = len(work.text_cases)
        every = work.text_cases + work.extra_text_cases
        hits_every = sum(bool(gold & {h.doc_id for h in backend.search(q, top_k=K).hits}) for q, gold in every)
        res["text"] = {
            "all_queries": len(every),
            "recall@5_all_queries": hits_every / len(every),
            "queries": n,
            "recall@5": hits / n,
            "p50_ms": lat.p(50),
            "p90_ms": lat.p(90),
            "cpu_p50_ms": lat.p(50, "cpu"),
            "baseline_scan": {"recall@5": base_hits / n, "p50_ms": base_lat.p(50), "cpu_p50_ms": base_lat.p(50, "cpu")},
            "speedup_vs_scan_p50": base_lat.p(50) / lat.p(50),
            "speedup_vs_scan_cpu_p50": base_lat.p(50, "cpu") / lat.p(50, "cpu"),
        }

    # ---- images
    if work.image_cases:
        idx = backend.images
        ids = idx._data["ids"] if idx._data is not None else np.array([])  # noqa: SLF001
        full_hashes = idx._data["hashes"][:, 0] if idx._data is not None else np.array([])  # noqa: SLF001
        hits = base_hits = 0
        rank_lat, base_lat, search_lat = Samples(), Samples(), Samples()
        for img, gold in work.image_cases:
            ranked = timed(lambda: idx.rank(img, K), args.repeat, rank_lat)
            hits += gold in {str(ids[r]) for r, _ in ranked}

            def single() -> list[int]:
                d = hamming(full_hashes, query_hash(img))
                return list(np.argsort(d, kind="stable")[:K])

            top = timed(single, args.repeat, base_lat)
            base_hits += gold in {str(ids[r]) for r in top}
            q = ImageQuery(image=img)
            timed(lambda: backend.search_image(q, top_k=K), 1, search_lat)
        n = len(work.image_cases)
        res["image"] = {
            "queries": n,
            "recall@5": hits / n,
            "rank_p50_ms": rank_lat.p(50),
            "rank_p90_ms": rank_lat.p(90),
            "rank_cpu_p50_ms": rank_lat.p(50, "cpu"),
            "search_with_thumbnails_p50_ms": search_lat.p(50),
            "baseline_single_phash": {"recall@5": base_hits / n, "p50_ms": base_lat.p(50),
                                      "cpu_p50_ms": base_lat.p(50, "cpu")},
            "slowdown_vs_single_phash_p50": rank_lat.p(50) / base_lat.p(50),
            "slowdown_vs_single_phash_cpu_p50": rank_lat.p(50, "cpu") / base_lat.p(50, "cpu"),
        }

    # ---- full tool calls (parse + search + render + images)
    text_tool = TextSearchTool(backend=backend)
    image_tool = ImageSearchTool(backend=backend)
    tool_lat: dict[str, float] = {}
    if work.text_cases:
        ctx = ToolContext(task_id="bench", images=[])
        lat = Samples()
        for query, _ in work.text_cases[:200]:
            timed(lambda: text_tool.execute(text_tool.parse({"query": query}), ctx), 1, lat)
        tool_lat["search_p50_ms"] = lat.p(50)
        tool_lat["search_cpu_p50_ms"] = lat.p(50, "cpu")
    if work.image_cases:
        lat = Samples()
        for img, _ in work.image_cases[:100]:
            ctx = ToolContext(task_id="bench", images=[img])
            timed(lambda: image_tool.execute(image_tool.parse({}), ctx), 1, lat)
        tool_lat["image_search_p50_ms"] = lat.p(50)
        tool_lat["image_search_cpu_p50_ms"] = lat.p(50, "cpu")
    res["tool_call"] = tool_lat
    res["targets"] = {"recall@5": 0.9, "text_p50_ms": 2.0}
    backend.close()
    tmp.cleanup()
    return res


def to_markdown(res: dict[str, Any]) -> str:
    lines = [f"# Offline search quality and latency ({res['source']})", "",
             f"{res['n_docs']} docs, {res['n_images']} images; index build: text "
             f"{res['build_s']['text']:.2f} s, images {res['build_s']['images']:.2f} s.", "",
             "Latencies are wall clock (CPU time of this process in brackets: the machine is shared).", "",
             "| measure | offline index | baseline | ratio |", "|---|---|---|---|"]
    if "text" in res:
        t, b = res["text"], res["text"]["baseline_scan"]
        lines.append(f"| text recall@5 ({t['queries']} queries) | {t['recall@5']:.3f} | "
                     f"{b['recall@5']:.3f} (Python scan) | |")
        if t["all_queries"] != t["queries"]:
            lines.append(f"| text recall@5, every query of multi-hop tasks ({t['all_queries']}) | "
                         f"{t['recall@5_all_queries']:.3f} | | |")
        lines.append(f"| text query p50 | {t['p50_ms']:.3f} ms ({t['cpu_p50_ms']:.3f}) | "
                     f"{b['p50_ms']:.3f} ms ({b['cpu_p50_ms']:.3f}) | "
                     f"{t['speedup_vs_scan_p50']:.1f}x ({t['speedup_vs_scan_cpu_p50']:.1f}x) faster |")
        lines.append(f"| text query p90 | {t['p90_ms']:.3f} ms | | |")
    if "image" in res:
        i, b = res["image"], res["image"]["baseline_single_phash"]
        lines.append(f"| image recall@5 ({i['queries']} queries) | {i['recall@5']:.3f} | "
                     f"{b['recall@5']:.3f} (single pHash) | |")
        lines.append(f"| image rank p50 | {i['rank_p50_ms']:.3f} ms ({i['rank_cpu_p50_ms']:.3f}) | "
                     f"{b['p50_ms']:.3f} ms ({b['cpu_p50_ms']:.3f}) | "
                     f"{i['slowdown_vs_single_phash_p50']:.2f}x ({i['slowdown_vs_single_phash_cpu_p50']:.2f}x) |")
        lines.append(f"| image rank p90 | {i['rank_p90_ms']:.3f} ms | | |")
        lines.append(f"| image search incl. result thumbnails p50 | {i['search_with_thumbnails_p50_ms']:.3f} ms | | |")
    tc = res.get("tool_call", {})
    if "search_p50_ms" in tc:
        lines.append(f"| tool call `search` p50 | {tc['search_p50_ms']:.3f} ms ({tc['search_cpu_p50_ms']:.3f}) | | |")
    if "image_search_p50_ms" in tc:
        lines.append(f"| tool call `image_search` p50, warm thumbnail cache | {tc['image_search_p50_ms']:.3f} ms "
                     f"({tc['image_search_cpu_p50_ms']:.3f}) | | |")
    lines += ["", f"Targets: recall@5 >= {res['targets']['recall@5']}, text p50 <= {res['targets']['text_p50_ms']} ms.",
              f"Machine: {res['machine']}, Python {res['python']}; load average at start {res['load_avg']}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--synthetic", action="store_true", help="use a generated corpus instead of the suite")
    ap.add_argument("--split", default="eval", help="suite split (default eval)")
    ap.add_argument("--n-docs", type=int, default=5000)
    ap.add_argument("--n-images", type=int, default=2000)
    ap.add_argument("--n-queries", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=5, help="timed repetitions of each query")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    res = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "search_quality" + ("_synthetic" if res["source"].startswith("synthetic") else "")
    (out / f"{stem}.json").write_text(json.dumps(res, indent=2))
    md = to_markdown(res)
    (out / f"{stem}.md").write_text(md)
    print(md)
    print(f"wrote {out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
