"""The offline search engine: an sqlite FTS5 text index and a perceptual-hash image index.

Both are built from a corpus directory (see :mod:`.corpus`), cached next to it, and rebuilt when
the corpus changes. Queries never reach FTS5 as syntax: the query is split into word tokens,
each is quoted (``"tok"``), and the tokens are OR-ed and ranked with BM25 (title weighted up), so
operators, quotes, parentheses, ``NEAR``, ``*`` or ``^`` typed by a model are plain words.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sqlite3
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .base import (
    DEFAULT_TOP_K,
    ImageHit,
    ImageQuery,
    ImageSearchBackend,
    ImageSearchResult,
    SearchError,
    TextHit,
    TextSearchBackend,
    TextSearchResult,
    checked_image,
)
from .corpus import (
    CorpusError,
    docs_fingerprint,
    images_fingerprint,
    iter_docs,
    iter_image_records,
    resolve_index_dir,
)
from .perceptual import DEFAULT_CROP_SCALES, crop_boxes, hamming, phash_boxes, query_hash

__all__ = ["OfflineTextIndex", "OfflineImageIndex", "OfflineSearch", "open_offline", "query_terms"]

log = logging.getLogger(__name__)

_TEXT_INDEX_VERSION = "fts5-v1"
_IMAGE_INDEX_VERSION = "phash-grid-v1"
MAX_QUERY_TERMS = 32  # Google ignores words after the 32nd; it also bounds the OR query's cost
SNIPPET_TOKENS = 40
BM25_ROW_BUDGET = 500  # at most this many matching rows are scored by FTS5's BM25 per query
CANDIDATE_CAP = 200  # docs ranked when every query term is common
BM25_K1 = 1.2  # FTS5's k1
MAX_SNIPPET_CHARS = 400
THUMBNAIL_SIDE = 512  # long side of result images (like Lens thumbnails; the env resizes anyway)

# Words that carry no signal but would make an OR query touch most of the index.
_STOPWORDS = frozenset(
    """a an and are as at be been but by did do does for from had has have how i if in into is it
    its me my not of on or so than that the their them then there these they this to was were what
    when where which who whom whose why will with would you your""".split()
)
_WORD = re.compile(r"\w+")


def query_terms(query: str, *, max_terms: int = MAX_QUERY_TERMS) -> list[str]:
    """Lower-cased word tokens of ``query``, stop words dropped (unless nothing else is left)."""
    words = [w.replace("_", " ").strip() for w in _WORD.findall(query.lower())]
    words = [w for w in words if w]
    seen: dict[str, None] = {}
    for w in words:
        if w not in _STOPWORDS:
            seen.setdefault(w, None)
    if not seen:
        seen = dict.fromkeys(words)
    return list(seen)[:max_terms]


def _fts_match(terms: list[str]) -> str:
    """An FTS5 MATCH expression in which every term is a quoted string (no operators)."""
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)


def _clean(text: str | None) -> str | None:
    """Drop lone surrogates (sqlite cannot store them)."""
    if text is None:
        return None
    return text.encode("utf-8", errors="surrogatepass").decode("utf-8", errors="replace")


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


class OfflineTextIndex(TextSearchBackend):
    """BM25 full-text search over ``docs.jsonl`` with sqlite FTS5."""

    name = "offline"

    def __init__(
        self,
        corpus: str | os.PathLike[str],
        *,
        index_dir: str | os.PathLike[str] | None = None,
        title_weight: float = 3.0,
    ) -> None:
        self.corpus = Path(corpus)
        if not self.corpus.is_dir():
            raise CorpusError(f"search corpus directory not found: {self.corpus}")
        self._index_dir_arg = index_dir
        self._index_dir: Path | None = None
        self.title_weight = float(title_weight)
        self._con: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self.n_docs = 0
        self._df_cache: dict[str, int] = {}
        self.build_seconds: float | None = None  # set when this process (re)built the index

    @property
    def path(self) -> Path:
        if self._index_dir is None:
            self._index_dir = resolve_index_dir(self.corpus, self._index_dir_arg)
        return self._index_dir / "text.sqlite"

    # -- building
    def open(self) -> "OfflineTextIndex":
        """Open the index, building or rebuilding it when the corpus changed."""
        with self._lock:
            if self._con is not None:
                return self
            path = self.path
            fingerprint = f"{_TEXT_INDEX_VERSION}:{self.title_weight}:{docs_fingerprint(self.corpus)}"
            if _read_meta(path, "fingerprint") != fingerprint:
                t0 = time.perf_counter()
                self._build(path, fingerprint)
                self.build_seconds = time.perf_counter() - t0
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
            self.n_docs = con.execute("SELECT count(*) FROM docs").fetchone()[0]
            self._df_cache = {}
            self._con = con
            return self

    def _build(self, path: Path, fingerprint: str) -> None:
        tmp = _tmp_path(path)
        con = sqlite3.connect(tmp)
        try:
            if not _has_fts5(con):
                raise SearchError("config", "this Python's sqlite3 lacks the FTS5 extension the offline "
                                            "text index needs (sqlite >= 3.9 built with FTS5)")
            con.executescript(
                """
                PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;
                CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT);
                CREATE TABLE docs(rowid INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL,
                                  title TEXT, url TEXT, text TEXT, date TEXT);
                CREATE VIRTUAL TABLE docs_fts USING fts5(
                    title, text, content='docs', content_rowid='rowid',
                    tokenize='porter unicode61 remove_diacritics 2');
                """
            )
            rows = ((_clean(d.id), _clean(d.title), _clean(d.url), _clean(d.text), _clean(d.date))
                    for d in iter_docs(self.corpus))
            try:
                con.executemany("INSERT INTO docs(id, title, url, text, date) VALUES (?,?,?,?,?)", rows)
            except sqlite3.IntegrityError as exc:
                raise CorpusError(f"docs.jsonl has a duplicate id ({exc})") from None
            con.execute("INSERT INTO docs_fts(rowid, title, text) SELECT rowid, title, text FROM docs")
            con.execute("INSERT INTO docs_fts(docs_fts) VALUES('optimize')")
            con.execute(
                "INSERT INTO docs_fts(docs_fts, rank) VALUES('rank', ?)",
                (f"bm25({self.title_weight}, 1.0)",),
            )
            con.execute("INSERT INTO meta VALUES('fingerprint', ?)", (fingerprint,))
            con.commit()
        except BaseException:
            con.close()
            tmp.unlink(missing_ok=True)
            raise
        con.close()
        os.replace(tmp, path)  # atomic: concurrent builders just race to the same content
        log.info("built text index of %s at %s", self.corpus, path)

    # -- querying
    def search(self, query: str, *, top_k: int = DEFAULT_TOP_K) -> TextSearchResult:
        self.open()
        terms = query_terms(query)
        hits: list[TextHit] = []
        if terms and top_k > 0:
            with self._lock:
                try:
                    ranked = self._rank(terms, int(top_k))
                    rows = self._fetch(terms, [r for r, _ in ranked])
                except sqlite3.Error as exc:  # should not happen: every term is quoted
                    raise SearchError("internal", f"the offline index failed on this query ({exc})") from exc
            for rowid, score in ranked:
                doc_id, title, url, date, snip = rows[rowid]
                snip = " ".join((snip or "").split())
                if len(snip) > MAX_SNIPPET_CHARS:
                    snip = snip[: MAX_SNIPPET_CHARS - 3].rstrip() + "..."
                hits.append(TextHit(title=title or "", url=url or "", snippet=snip, date=date or None,
                                    doc_id=doc_id, score=score))
        return TextSearchResult(query=query, hits=hits, backend=self.name, metadata={"terms": terms})

    # FTS5's BM25 scores every row that matches any query term, so one term found in a large
    # share of the corpus makes an OR query cost O(its document count) (40 ms on 100k templated
    # docs). So BM25 runs only over the rarest terms, up to BM25_ROW_BUDGET matching rows; each
    # remaining ("common") term adds its BM25-style weight to the candidates that contain it,
    # found with cheap ``(rare terms) AND term`` queries. When every term is common, the first
    # CANDIDATE_CAP docs that contain all of them are ranked the same way.
    def _df(self, term: str) -> int:
        n = self._df_cache.get(term)
        if n is None:
            assert self._con is not None
            sql = "SELECT count(*) FROM docs_fts WHERE docs_fts MATCH ?"
            n = self._con.execute(sql, (_fts_match([term]),)).fetchone()[0]
            if len(self._df_cache) > 100_000:
                self._df_cache.clear()
            self._df_cache[term] = n
        return n

    def _weight(self, term: str, in_title: bool) -> float:
        """BM25 weight of one occurrence (title occurrences weighted as the index ranks them)."""
        df = self._df(term)
        idf = max(math.log((self.n_docs - df + 0.5) / (df + 0.5)), 1e-6)  # FTS5's clamp
        tf = self.title_weight + 1.0 if in_title else 1.0
        return idf * tf * (BM25_K1 + 1) / (tf + BM25_K1)

    def _rank(self, terms: list[str], top_k: int) -> list[tuple[int, float]]:
        """(rowid, score) of the best ``top_k`` docs, best first."""
        con = self._con
        assert con is not None
        terms = [t for t in terms if self._df(t) > 0]
        if not terms:
            return []
        rare: list[str] = []
        rows = 0
        for t in sorted(terms, key=self._df):
            if rows + self._df(t) > BM25_ROW_BUDGET:
                break
            rare.append(t)
            rows += self._df(t)
        common = [t for t in terms if t not in rare]
        bm25 = "SELECT rowid, rank FROM docs_fts WHERE docs_fts MATCH ? ORDER BY rank LIMIT ?"
        if not common:
            return [(r, -rank) for r, rank in con.execute(bm25, (_fts_match(terms), top_k))]
        scores: dict[int, float] = {}
        if rare:
            scores = {r: -rank for r, rank in con.execute(bm25, (_fts_match(rare), BM25_ROW_BUDGET))}
            self._add_common(scores, f"({_fts_match(rare)}) AND ", common, None)
        ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
        if len(ranked) < top_k:  # few or no rare-term matches: docs having every common term
            seen = {r for r, _ in ranked}
            all_common = " AND ".join(_fts_match([t]) for t in common)
            cands = [r for (r,) in con.execute("SELECT rowid FROM docs_fts WHERE docs_fts MATCH ? LIMIT ?",
                                               (all_common, CANDIDATE_CAP))]
            if cands:
                extra = {r: 0.0 for r in cands if r not in seen}
                self._add_common(extra, "", common, max(cands))  # every candidate has every term
                ranked += sorted(extra.items(), key=lambda kv: (-kv[1], kv[0]))[: top_k - len(ranked)]
        return ranked

    def _add_common(self, scores: dict[int, float], base: str, common: list[str], max_rowid: int | None) -> None:
        """Add each common term's weight to the docs of ``scores`` that contain it.

        ``base`` restricts the look-ups to the candidates (``"(rare terms) AND "``); with an empty
        base every candidate is known to contain every term and only titles are looked up, among
        rowids up to ``max_rowid``.
        """
        assert self._con is not None
        sql = "SELECT rowid FROM docs_fts WHERE docs_fts MATCH ?"
        args: tuple = ()
        if max_rowid is not None:
            sql += " AND rowid <= ?"
            args = (max_rowid,)
        for t in common:
            phrase = _fts_match([t])
            in_title = {r for (r,) in self._con.execute(sql, (base + "title : " + phrase, *args))}
            present = self._con.execute(sql, (base + phrase, *args)) if base else ((r,) for r in list(scores))
            for (r,) in present:
                if r in scores:
                    scores[r] += self._weight(t, r in in_title)

    def _fetch(self, terms: list[str], rowids: list[int]) -> dict[int, tuple]:
        """rowid -> (id, title, url, date, snippet); two plain look-ups beat one join here."""
        if not rowids:
            return {}
        assert self._con is not None
        ids = ",".join(str(int(r)) for r in rowids)
        snippets = dict(self._con.execute(
            f"SELECT rowid, snippet(docs_fts, 1, '', '', '...', {SNIPPET_TOKENS}) FROM docs_fts "
            f"WHERE docs_fts MATCH ? AND rowid IN ({ids})", (_fts_match(terms),)))
        rows = self._con.execute(f"SELECT rowid, id, title, url, date FROM docs WHERE rowid IN ({ids})")
        return {r[0]: (*r[1:], snippets.get(r[0], "")) for r in rows}

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None


def _has_fts5(con: sqlite3.Connection) -> bool:
    try:
        con.execute("CREATE VIRTUAL TABLE temp._fts5_probe USING fts5(x)")
        con.execute("DROP TABLE temp._fts5_probe")
        return True
    except sqlite3.OperationalError:
        return False


def _read_meta(path: Path, key: str) -> str | None:
    if not path.exists():
        return None
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        finally:
            con.close()
        return row[0] if row else None
    except sqlite3.Error:
        return None  # a corrupt or foreign file: rebuild


class OfflineImageIndex(ImageSearchBackend):
    """Reverse image search over ``images.jsonl`` with crop-grid perceptual hashes."""

    name = "offline"

    def __init__(
        self,
        corpus: str | os.PathLike[str],
        *,
        index_dir: str | os.PathLike[str] | None = None,
        crop_scales: tuple[float, ...] = DEFAULT_CROP_SCALES,
        thumbnail_side: int = THUMBNAIL_SIDE,
    ) -> None:
        self.corpus = Path(corpus)
        if not self.corpus.is_dir():
            raise CorpusError(f"search corpus directory not found: {self.corpus}")
        self._index_dir_arg = index_dir
        self._index_dir: Path | None = None
        self.crop_scales = tuple(float(s) for s in crop_scales)
        self.thumbnail_side = int(thumbnail_side)
        self._lock = threading.RLock()
        self._data: dict[str, np.ndarray] | None = None
        self._thumbs: OrderedDict[str, Image.Image] = OrderedDict()
        self.skipped: list[str] = []  # ids whose image could not be read at build time
        self.build_seconds: float | None = None

    @property
    def path(self) -> Path:
        if self._index_dir is None:
            self._index_dir = resolve_index_dir(self.corpus, self._index_dir_arg)
        return self._index_dir / "images.npz"

    @property
    def n_images(self) -> int:
        self.open()
        assert self._data is not None
        return len(self._data["ids"])

    def open(self) -> "OfflineImageIndex":
        with self._lock:
            if self._data is not None:
                return self
            path = self.path
            fingerprint = f"{_IMAGE_INDEX_VERSION}:{self.crop_scales}:{images_fingerprint(self.corpus)}"
            data = _load_npz(path)
            if data is None or str(data["fingerprint"]) != fingerprint:
                t0 = time.perf_counter()
                data = self._build(path, fingerprint)
                self.build_seconds = time.perf_counter() - t0
            self.skipped = [str(s) for s in data["skipped"]]
            self._data = data
            return self

    def _build(self, path: Path, fingerprint: str) -> dict[str, np.ndarray]:
        ids, titles, urls, paths, doc_ids, hashes, skipped = [], [], [], [], [], [], []
        seen: set[str] = set()
        root = self.corpus.resolve()
        n_boxes = len(crop_boxes(1, 1, self.crop_scales))
        for rec in iter_image_records(self.corpus):
            if rec.id in seen:
                raise CorpusError(f"images.jsonl has a duplicate id {rec.id!r}")
            seen.add(rec.id)
            try:
                with Image.open(rec.path) as raw:
                    img = checked_image(raw)
                    h = phash_boxes(img, self.crop_scales)
            except (OSError, SearchError) as exc:
                log.warning("image search index: skipping %s (%s)", rec.id, exc)
                skipped.append(rec.id)
                continue
            ids.append(rec.id)
            titles.append(rec.title)
            urls.append(rec.url)
            paths.append(str(rec.path.relative_to(root)))
            doc_ids.append(rec.doc_id or "")
            hashes.append(h)
        data = {
            "fingerprint": np.array(fingerprint),
            "ids": np.array(ids, dtype=str),
            "titles": np.array([_clean(t) for t in titles], dtype=str),
            "urls": np.array(urls, dtype=str),
            "paths": np.array(paths, dtype=str),
            "doc_ids": np.array(doc_ids, dtype=str),
            "hashes": np.stack(hashes) if hashes else np.zeros((0, n_boxes), np.uint64),
            "skipped": np.array(skipped, dtype=str),
        }
        tmp = _tmp_path(path)
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        log.info("built image index of %s at %s (%d images, %d skipped)",
                 self.corpus, path, len(ids), len(skipped))
        return data

    def rank(self, image: Image.Image, top_k: int = DEFAULT_TOP_K) -> list[tuple[int, int]]:
        """(row, Hamming distance) of the ``top_k`` nearest corpus images, nearest first."""
        self.open()
        assert self._data is not None
        hashes = self._data["hashes"]
        if len(hashes) == 0 or top_k <= 0:
            return []
        dist = hamming(hashes, query_hash(image)).min(axis=1)
        k = min(int(top_k), len(dist))
        part = np.argpartition(dist, k - 1)[:k] if k < len(dist) else np.arange(len(dist))
        order = part[np.lexsort((part, dist[part]))]  # by distance, then corpus order
        return [(int(i), int(dist[i])) for i in order]

    def search_image(self, query: ImageQuery, *, top_k: int = DEFAULT_TOP_K) -> ImageSearchResult:
        ranked = self.rank(query.image, top_k)
        assert self._data is not None
        d = self._data
        hits = []
        for row, dist in ranked:
            hits.append(ImageHit(
                title=str(d["titles"][row]),
                url=str(d["urls"][row]),
                image=self._thumbnail(str(d["paths"][row])),
                image_id=str(d["ids"][row]),
                score=float(dist),
            ))
        return ImageSearchResult(hits=hits, backend=self.name,
                                 metadata={"doc_ids": [str(d["doc_ids"][r]) or None for r, _ in ranked]})

    def _thumbnail(self, rel: str) -> Image.Image | None:
        with self._lock:
            if rel in self._thumbs:
                self._thumbs.move_to_end(rel)
                return self._thumbs[rel].copy()
        try:
            with Image.open(self.corpus / rel) as raw:
                img = checked_image(raw)
                if max(img.size) > self.thumbnail_side:
                    img = img.copy()
                    img.thumbnail((self.thumbnail_side, self.thumbnail_side), Image.LANCZOS)
        except (OSError, SearchError) as exc:  # the file changed since the index was built
            log.warning("image search: cannot load result image %s (%s)", rel, exc)
            return None
        with self._lock:
            self._thumbs[rel] = img
            while len(self._thumbs) > 256:
                self._thumbs.popitem(last=False)
        return img.copy()

    def close(self) -> None:
        with self._lock:
            self._data = None
            self._thumbs.clear()


def _load_npz(path: Path) -> dict[str, np.ndarray] | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:  # truncated or foreign file: rebuild
        log.warning("image index %s unreadable (%s); rebuilding", path, exc)
        return None


class OfflineSearch(TextSearchBackend, ImageSearchBackend):
    """Text and image search over one corpus directory (both indexes built lazily)."""

    name = "offline"

    def __init__(self, corpus: str | os.PathLike[str], *, index_dir: str | os.PathLike[str] | None = None,
                 **image_kwargs: Any) -> None:
        self.corpus = Path(corpus)
        self.text = OfflineTextIndex(corpus, index_dir=index_dir)
        self.images = OfflineImageIndex(corpus, index_dir=index_dir, **image_kwargs)

    def build(self) -> "OfflineSearch":
        """Build or open both indexes now instead of on the first query."""
        self.text.open()
        self.images.open()
        return self

    def search(self, query: str, *, top_k: int = DEFAULT_TOP_K) -> TextSearchResult:
        return self.text.search(query, top_k=top_k)

    def search_image(self, query: ImageQuery, *, top_k: int = DEFAULT_TOP_K) -> ImageSearchResult:
        return self.images.search_image(query, top_k=top_k)

    def close(self) -> None:
        self.text.close()
        self.images.close()


_SHARED: dict[tuple[str, str], OfflineSearch] = {}
_SHARED_LOCK = threading.Lock()


def open_offline(
    corpus: str | os.PathLike[str], *, index_dir: str | os.PathLike[str] | None = None
) -> OfflineSearch:
    """One shared :class:`OfflineSearch` per corpus in this process (tools and envs reuse it)."""
    key = (str(Path(corpus).resolve()), str(index_dir or ""))
    with _SHARED_LOCK:
        backend = _SHARED.get(key)
        if backend is None:
            backend = _SHARED[key] = OfflineSearch(corpus, index_dir=index_dir)
        return backend
