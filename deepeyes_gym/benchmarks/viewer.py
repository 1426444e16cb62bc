"""A self-contained HTML trajectory viewer: one file, images inline as data URLs, no network.

Each episode shows the question and input images, then every turn: the thought, the code or tool
call, the observation (stdout/stderr, search results) with the images that came back placed where
their ``<image>`` placeholders stood, errors, and finally the answer against the ground truth and
the reward breakdown. Filters (correct / wrong / errored, free text) run in a few lines of inline
JavaScript. Images come from the files the runner saved; a size budget keeps the file loadable
(wrong and errored episodes get their images first, since they are the ones people debug).
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..envs.turns import IMAGE_TOKEN
from .records import dedupe_records

__all__ = ["render_viewer", "write_viewer", "split_turn"]

_THINK = re.compile(r"<think>(.*?)(?:</think>|\Z)", re.S)

_CSS = """
*{box-sizing:border-box}body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d232b}
header{position:sticky;top:0;background:#1f2937;color:#fff;padding:10px 18px;z-index:2;display:flex;flex-wrap:wrap;gap:14px;align-items:center}
header h1{font-size:16px;margin:0 12px 0 0}header .stat{opacity:.9}
header input,header select,header button{font:inherit;padding:3px 6px;border-radius:4px;border:1px solid #9ca3af}
main{padding:14px 18px;max-width:1200px;margin:auto}
details.ep{background:#fff;border:1px solid #d9dde3;border-left:5px solid #9ca3af;border-radius:6px;margin:8px 0}
details.ep.correct{border-left-color:#16a34a}details.ep.wrong{border-left-color:#dc2626}details.ep.errored{border-left-color:#f59e0b}
details.sys{background:#fff;border:1px solid #d9dde3;border-radius:6px;margin:8px 0;padding:6px 12px}
#js-errors{background:#fee2e2;color:#991b1b;padding:6px 18px;white-space:pre-wrap}#js-errors:empty{display:none}
details.ep>summary{cursor:pointer;padding:8px 12px;display:flex;gap:10px;flex-wrap:wrap;align-items:baseline}
.mark{font-weight:700;width:1.2em}.correct .mark{color:#16a34a}.wrong .mark{color:#dc2626}.errored .mark{color:#b45309}
.tid{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;color:#374151}
.tag{background:#eef2f7;border-radius:10px;padding:0 8px;font-size:12px;color:#374151}
.body{padding:4px 14px 14px}.q{white-space:pre-wrap;background:#f9fafb;border:1px solid #e5e7eb;border-radius:5px;padding:8px}
.turn{border-top:1px dashed #d1d5db;margin-top:10px;padding-top:8px}.turn h4{margin:0 0 6px;font-size:13px;color:#4b5563}
.thought{white-space:pre-wrap;color:#4b5563;font-style:italic;margin:4px 0}
pre{background:#0f172a;color:#e2e8f0;padding:8px;border-radius:5px;overflow:auto;max-height:420px;white-space:pre-wrap;word-break:break-word;font-size:12.5px}
pre.obs{background:#f3f4f6;color:#111827;border:1px solid #e5e7eb}
.err{color:#b91c1c;font-weight:600;white-space:pre-wrap}
img.pic{max-width:100%;max-height:460px;border:1px solid #d1d5db;border-radius:4px;margin:4px 4px 4px 0;vertical-align:top;image-rendering:auto;background:#fff}
.imgrow{display:flex;flex-wrap:wrap;gap:6px;align-items:flex-start}.noimg{color:#6b7280;font-size:12px}
table.kv{border-collapse:collapse;margin-top:6px}table.kv td{border:1px solid #e5e7eb;padding:3px 8px;font-size:13px;vertical-align:top}
table.kv td:first-child{color:#4b5563;background:#f9fafb}.hits li{margin:3px 0}.hits .sn{color:#4b5563;font-size:12.5px}
.hidden{display:none}#count{font-size:13px;opacity:.85}
"""

_JS = """
window.addEventListener('error', function(ev){
  var box = document.getElementById('js-errors');
  if (box) box.textContent += 'viewer script error: ' + ev.message + '\\n';
});
(function(){
  var eps = Array.prototype.slice.call(document.querySelectorAll('details.ep'));
  var q = document.getElementById('q'), st = document.getElementById('status'), cnt = document.getElementById('count');
  function apply(){
    var text = (q.value || '').toLowerCase(), want = st.value, shown = 0;
    eps.forEach(function(e){
      var ok = (want === 'all' || e.getAttribute('data-status') === want) &&
               (!text || (e.getAttribute('data-search') || '').indexOf(text) !== -1);
      e.classList.toggle('hidden', !ok); if (ok) shown++;
    });
    cnt.textContent = shown + ' / ' + eps.length + ' episodes';
  }
  q.addEventListener('input', apply); st.addEventListener('change', apply);
  document.getElementById('expand').addEventListener('click', function(){
    eps.forEach(function(e){ if (!e.classList.contains('hidden')) e.open = true; }); });
  document.getElementById('collapse').addEventListener('click', function(){
    eps.forEach(function(e){ e.open = false; }); });
  if (location.hash === '#all') { eps.forEach(function(e){ e.open = true; }); }
  else if (eps.length) { eps[0].open = true; }
  apply();
})();
"""


def split_turn(action: str) -> tuple[str, str]:
    """(thought, the rest) of an assistant turn; a pre-filled turn has no opening ``<think>``."""
    action = action or ""
    if "</think>" in action and "<think>" not in action.split("</think>", 1)[0]:
        thought, rest = action.split("</think>", 1)
        return thought.strip(), rest.strip()
    m = _THINK.search(action)
    if not m:
        return "", action.strip()
    return m.group(1).strip(), (action[: m.start()] + action[m.end():]).strip()


def _esc(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _status(rec: Mapping[str, Any]) -> str:
    if rec.get("status") != "ok":
        return "errored"
    return "correct" if float(rec.get("accuracy") or 0.0) >= 1.0 else "wrong"


class _Images:
    """Reads saved image files and turns them into data URLs within a byte budget."""

    def __init__(self, root: Path | None, budget_bytes: int):
        self.root, self.left = root, budget_bytes
        self.omitted = 0

    def tag(self, entry: Mapping[str, Any]) -> str:
        if self.root is None:
            return ""
        path = self.root / entry["file"]
        try:
            data = path.read_bytes()
        except OSError:
            return f'<span class="noimg">[image file missing: {_esc(entry["file"])}]</span>'
        if len(data) > self.left:
            self.omitted += 1
            return f'<span class="noimg">[image {entry.get("width")}×{entry.get("height")} not embedded: size budget]</span>'
        self.left -= len(data)
        mime = "image/png" if path.suffix.lower() == ".png" else "image/jpeg"
        url = f"data:{mime};base64," + base64.b64encode(data).decode("ascii")
        title = f'{entry.get("width")}×{entry.get("height")} (original size)'
        return f'<img class="pic" loading="lazy" alt="image" title="{title}" src="{url}">'


def _hits_html(meta: Mapping[str, Any]) -> str:
    hits = meta.get("hits") if isinstance(meta, Mapping) else None
    if not isinstance(hits, list) or not hits or not all(isinstance(h, Mapping) for h in hits):
        return ""
    items = []
    for h in hits[:10]:
        title = _esc(h.get("title", ""))
        url = str(h.get("url") or "")
        link = f'<a href="{_esc(url)}" rel="noreferrer noopener" target="_blank">{title}</a>' if url.startswith(("http://", "https://")) else title
        sn = f'<div class="sn">{_esc(h.get("snippet"))}</div>' if h.get("snippet") else ""
        items.append(f"<li>{link}{sn}</li>")
    return '<div>Search hits:</div><ol class="hits">' + "".join(items) + "</ol>"


def _with_images(text: str, imgs: Sequence[str]) -> str:
    """Observation text with each ``<image>`` placeholder replaced by its picture."""
    chunks = (text or "").split(IMAGE_TOKEN)
    out = []
    for i, chunk in enumerate(chunks):
        if chunk.strip():
            out.append(f'<pre class="obs">{_esc(chunk.strip(chr(10)))}</pre>')
        if i < len(chunks) - 1 and i < len(imgs):
            out.append(imgs[i])
    extra = imgs[len(chunks) - 1:]
    if extra:
        out.append('<div class="imgrow">' + "".join(extra) + "</div>")
    return "".join(out)


def _episode_html(rec: Mapping[str, Any], images: _Images) -> str:
    status = _status(rec)
    by_msg: dict[int, list[str]] = {}
    for entry in rec.get("images", ()) or ():
        by_msg.setdefault(int(entry.get("message", -1)), []).append(images.tag(entry))
    mark = {"correct": "✓", "wrong": "✗", "errored": "!"}[status]
    caps = "".join(f'<span class="tag">{_esc(c)}</span>' for c in rec.get("capabilities", ()) or ())
    head = (
        f'<summary><span class="mark">{mark}</span><span class="tid">{_esc(rec.get("key"))} · {_esc(rec.get("task_id"))}</span>'
        f'<span class="tag">{_esc(rec.get("domain"))}</span>{caps}'
        f'<span>answer: <b>{_esc(rec.get("prediction"))}</b> · truth: <b>{_esc(rec.get("ground_truth"))}</b></span>'
        f'<span class="tag">{int(rec.get("n_turns") or 0)} turns</span>'
        f'<span class="tag">reward {_esc(rec.get("reward"))}</span></summary>'
    )
    parts = [f'<div class="q">{_esc(rec.get("question"))}</div>']
    if by_msg.get(1):
        parts.append('<div class="imgrow">' + "".join(by_msg[1]) + "</div>")
    for t_i, turn in enumerate(rec.get("turns", ()) or ()):
        thought, rest = split_turn(turn.get("action") or "")
        kind = turn.get("kind")
        label = {"code": "code", "tool_call": f"tool call: {turn.get('tool')}", "answer": "answer",
                 "invalid": "invalid action"}.get(kind, str(kind))
        lat = f" · {1000 * float(turn.get('latency_s') or 0):.0f} ms" if turn.get("tool") else ""
        block = [f'<div class="turn"><h4>Turn {t_i + 1} — {_esc(label)}{lat}</h4>']
        if thought:
            block.append(f'<div class="thought">{_esc(thought)}</div>')
        if kind == "code" and isinstance(turn.get("arguments"), str):
            block.append(f"<pre>{_esc(turn['arguments'])}</pre>")
        elif kind == "tool_call":
            block.append(f"<pre>{_esc(json.dumps({'name': turn.get('tool'), 'arguments': turn.get('arguments')}, ensure_ascii=False, indent=1))}</pre>")
        elif rest:
            block.append(f"<pre>{_esc(rest)}</pre>")
        if turn.get("error"):
            block.append(f'<div class="err">{_esc(turn["error"])}</div>')
        block.append(_hits_html(turn.get("metadata") or {}))
        if turn.get("observation") is not None:
            block.append(_with_images(turn["observation"], by_msg.get(3 + 2 * t_i, [])))
        block.append("</div>")
        parts.append("".join(block))
    if rec.get("error"):
        parts.append(f'<div class="turn err">Episode error: {_esc(rec["error"])}</div>')
    rows = [("answer", rec.get("prediction")), ("ground truth", rec.get("ground_truth")), ("reward", rec.get("reward")),
            ("accuracy", rec.get("accuracy")), ("format ok", rec.get("format_ok"))]
    for k, v in (rec.get("reward_breakdown") or {}).items():
        if k not in ("accuracy", "format_ok"):
            rows.append((k, json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v))
    timing = rec.get("timing") or {}
    rows.append(("time", f"wall {float(timing.get('wall_s') or 0):.2f} s · agent {float(timing.get('agent_s') or 0):.2f} s · "
                          f"tools {float(timing.get('tool_s') or 0):.2f} s"))
    parts.append('<div class="turn"><h4>Reward breakdown</h4><table class="kv">'
                 + "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>" for k, v in rows) + "</table></div>")
    search = " ".join(str(rec.get(k) or "") for k in ("key", "task_id", "question", "answer", "ground_truth", "domain",
                                                      "family")) + " " + " ".join(rec.get("capabilities") or [])
    return (f'<details class="ep {status}" data-status="{status}" data-search="{_esc(search.lower())}">'
            f'{head}<div class="body">{"".join(parts)}</div></details>')


def render_viewer(
    records: Iterable[Mapping[str, Any]],
    *,
    images_root: str | Path | None = None,
    title: str = "deepeyes-gym trajectories",
    image_budget_mb: float = 40.0,
    max_episodes: int | None = None,
    system_prompt: str | None = None,
) -> str:
    """The viewer page as a string (see module doc)."""
    recs = dedupe_records(records)
    if max_episodes is not None:
        recs = recs[:max_episodes]
    images = _Images(Path(images_root) if images_root is not None else None, int(image_budget_mb * 2**20))
    # Spend the image budget on the episodes people debug first: errored, then wrong, then correct.
    order = {"errored": 0, "wrong": 1, "correct": 2}
    rendered: dict[int, str] = {}
    for i in sorted(range(len(recs)), key=lambda i: (order[_status(recs[i])], i)):
        rendered[i] = _episode_html(recs[i], images)
    n = len(recs)
    counts = {s: sum(1 for r in recs if _status(r) == s) for s in order}
    acc = sum(float(r.get("accuracy") or 0) for r in recs) / n if n else 0.0
    first = recs[0] if recs else {}
    note = (f'<p class="noimg">{images.omitted} images were not embedded (size budget of {image_budget_mb:g} MB); '
            "the files are in the run's images/ folder.</p>") if images.omitted else ""
    sysp = (f'<details class="sys"><summary>System prompt</summary><div class="body"><pre class="obs">{_esc(system_prompt)}</pre>'
            "</div></details>") if system_prompt else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,"><title>{_esc(title)}</title><style>{_CSS}</style></head>
<body><header><h1>{_esc(title)}</h1>
<span class="stat">{_esc(first.get("env_id"))} · {_esc(first.get("agent"))}</span>
<span class="stat">accuracy {100 * acc:.1f}% · ✓ {counts['correct']} · ✗ {counts['wrong']} · ! {counts['errored']}</span>
<input id="q" type="search" placeholder="filter: id, question, answer…" aria-label="filter">
<select id="status" aria-label="status"><option value="all">all</option><option value="correct">correct</option>
<option value="wrong">wrong</option><option value="errored">errored</option></select>
<button id="expand" type="button">expand</button><button id="collapse" type="button">collapse</button>
<span id="count"></span></header><div id="js-errors"></div>
<main>{note}{sysp}{"".join(rendered[i] for i in range(n))}</main>
<script>{_JS}</script></body></html>
"""


def write_viewer(records: Iterable[Mapping[str, Any]], path: str | Path, **kwargs: Any) -> Path:
    """Write the viewer; images are read relative to the file's folder unless ``images_root``."""
    path = Path(path)
    kwargs.setdefault("images_root", path.parent)
    path.write_text(render_viewer(records, **kwargs), encoding="utf-8")
    return path
