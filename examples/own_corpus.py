"""Build and search your own offline corpus, then let an env's search tools use it.

A corpus is a folder with ``docs.jsonl`` (one ``{"id", "title", "url", "text", "date"?}`` per
line) and/or ``images.jsonl`` (one ``{"id", "path", "title", "url"}`` per line, ``path``
relative to the folder) plus the image files. This script writes a small one, indexes it (sqlite
FTS5 with BM25 for text, perceptual hashes for images; cached in ``<corpus>/.index`` and rebuilt
only when the files change), queries it directly, and then plays an episode whose ``search`` and
``image_search`` tool calls are answered from it — no key, no network.

    python examples/own_corpus.py [--corpus my_corpus]

The same indexing from the command line::

    deepeyes-gym index my_corpus --query "who designed the harbour lighthouse" --image photo.jpg
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from deepeyes_gym.envs import DeepEyesEnv, Task
from deepeyes_gym.envs.search import make_backend, render_text_results
from deepeyes_gym.envs.search.base import ImageQuery

DOCS = [
    ("lighthouse", "Korrin Point Lighthouse", "The Korrin Point Lighthouse was designed by the engineer Maren Ostby "
     "and first lit in 1871. Its lamp is visible for 22 nautical miles."),
    ("mill", "Tallow Creek Mill", "Tallow Creek Mill is a watermill built in 1790 by the Haverly family; it ground "
     "grain for four villages until 1932."),
    ("bridge", "Sennet Arch Bridge", "The Sennet Arch Bridge, a stone arch bridge of seven spans, was completed in "
     "1824 to a design by Jonas Pell."),
    ("observatory", "Halvard Ridge Observatory", "Halvard Ridge Observatory houses a 1.2 m reflector; its first "
     "director was the astronomer Ilse Brandt."),
]


def emblem(seed: int) -> Image.Image:
    """A distinctive picture per entity (stands in for your photos)."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (320, 240), tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, 260)), int(rng.integers(0, 180))
        draw.ellipse([x0, y0, x0 + int(rng.integers(20, 80)), y0 + int(rng.integers(20, 80))],
                     fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return img


def write_corpus(root: Path) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    with open(root / "docs.jsonl", "w", encoding="utf-8") as f:
        for doc_id, title, text in DOCS:
            f.write(json.dumps({"id": doc_id, "title": title, "url": f"https://example.org/{doc_id}", "text": text}) + "\n")
    with open(root / "images.jsonl", "w", encoding="utf-8") as f:
        for i, (doc_id, title, _) in enumerate(DOCS):
            emblem(i).save(root / "images" / f"{doc_id}.jpg", quality=92)
            f.write(json.dumps({"id": f"img-{doc_id}", "path": f"images/{doc_id}.jpg", "title": title,
                                "url": f"https://example.org/{doc_id}", "doc_id": doc_id}) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=None, help="where to write the corpus (default: a temporary folder)")
    args = ap.parse_args()
    tmp = None
    if args.corpus is None:
        tmp = tempfile.TemporaryDirectory()
        args.corpus = tmp.name
    root = Path(args.corpus)
    write_corpus(root)

    # 1. build (or reuse) the indexes and query them directly
    backend = make_backend("offline", corpus=str(root))
    hits = backend.search("who designed the lighthouse", top_k=3).hits
    print(render_text_results("who designed the lighthouse", hits), "\n")
    photo = emblem(2).crop((20, 10, 300, 230)).resize((200, 157))  # a cropped, rescaled copy of the bridge
    found = backend.search_image(ImageQuery(image=photo), top_k=2).hits
    print("reverse image search:", [(h.title, h.image_id) for h in found], "\n")

    # 2. an env whose search tools answer from this corpus
    task = Task(id="bridge-designer", question="Who designed the bridge in the photo?", answer="Jonas Pell",
                images=[photo], answer_kind="text", capabilities={"search"}, domain="travel")
    corpus_opts = {"backend": "offline", "corpus": str(root)}
    env = DeepEyesEnv([task], tools=("search", "image_search"),
                      tool_kwargs={"search": corpus_opts, "image_search": corpus_opts})
    env.reset(options={"task_index": 0})
    turns = [
        '<think>Find what the photo shows.</think><tool_call>{"name": "image_search"}</tool_call>',
        '<think>It is the Sennet Arch Bridge; look up its designer.</think>'
        '<tool_call>{"name": "search", "arguments": {"query": "Sennet Arch Bridge design"}}</tool_call>',
        "<think>The result names Jonas Pell.</think><answer>Jonas Pell</answer>",
    ]
    for action in turns:
        obs, reward, terminated, truncated, info = env.step(action)
        if obs["text"]:
            print(f"--- observation ({len(obs['images'])} images)\n{obs['text']}\n")
    print(f"reward={reward} accuracy={info['accuracy']} answer={info['answer']!r}")
    env.close()
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
