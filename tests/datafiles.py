"""Writers of tiny data files in the exact formats the loaders read (shared by env tests)."""

from __future__ import annotations

import base64
import csv
import io
from pathlib import Path

from PIL import Image


def jpeg_b64(w: int = 320, h: int = 240, colour=(200, 30, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, "JPEG")
    return base64.b64encode(buf.getvalue()).decode()


def write_vlmevalkit_tsv(path: Path, n: int = 3) -> Path:
    """What VLMEvalKit's ``to_csv(sep='\\t')`` writes for a multiple-choice benchmark."""
    header = ["index", "image", "question", "A", "B", "C", "D", "answer", "category"]
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(header)
        for i in range(n):
            w.writerow([i, jpeg_b64(320 + 10 * i), f"What colour is the square {i}?", "red", "blue", "green",
                        "white", "A", "attributes"])
    return path


def write_rl_parquet(path: Path, n: int = 3) -> Path:
    """The DeepEyesV2 RL parquet layout (prompt, images, data_source, reward_model, extra_info)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (300, 200), (10, 20 * i, 30)).save(buf, "PNG")
        rows.append({
            "data_source": "perception",
            "prompt": [{"role": "user", "content": f"<image>\nHow many dots are there in picture {i}?"}],
            "images": [{"bytes": buf.getvalue(), "path": None}],
            "ability": "vl",
            "env_name": "deepeyesv2",
            "reward_model": {"ground_truth": str(i), "style": "model"},
            "extra_info": {"answer": str(i), "index": i, "split": "train", "question": f"How many dots are there in picture {i}?"},
        })
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path
