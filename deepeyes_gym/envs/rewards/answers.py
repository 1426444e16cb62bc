"""Rule-based answer equivalence: is a model's final answer the same as the reference?

The rules are deliberately two-sided. A lenient matcher gets hacked (an answer that lists every
candidate, or a long rant that happens to contain the reference), a strict one zeroes correct
answers written differently ("1/2" for "0.5", "(B) red" for "B", "Yes." for "yes"). So each rule
returns a three-valued :class:`MatchResult`: ``True`` (equivalent), ``False`` (provably different)
or ``None`` (the rules cannot decide; an LLM judge may, see :mod:`.judge`).
:func:`answers_match` collapses that to a bool (undecided counts as no match).

Kinds (``Task.answer_kind``; inferred from the reference when None):

``numeric``
    Integers compare exactly; other references within a relative 1e-4, or when the prediction
    rounded to the reference's decimals equals it ("3.1416" matches a reference "3.14", not the
    other way round). Thousands separators ("1,000"; never after a leading 0), decimal commas
    ("0,111", "1,22"), currency, percentages ("50%" ~ "50" ~ "0.5"), scale
    words ("5 million"), fractions ("1/2", "\\frac12"), number words ("six"), unicode minus and
    full-width digits are understood; units are stripped (different units on both sides: undecided).
``choice``
    ``B``, ``(B)``, ``B.``, ``Option B``, ``(B) red`` or, when the options are known, the option's
    text. Several letters in the prediction ("A or B") never match a single-letter reference. A
    statement that ends the answer ("... The best answer is: (A)") outranks a letter that leads
    it; statements that disagree, or a leading letter taken back ("(C), but ..."), are undecided.
``yesno``
    yes/no/true/false, case and trailing punctuation ignored ("Yes." matches "yes").
``text``
    Case, accents, punctuation, articles and answer prefixes ("The answer is ...") ignored;
    numbers compare by exact value only ("1,000" = "1000" but "3.14" != "3.1416" and
    "1.000" != "1,000").
``math``
    Normalised LaTeX string equality, then numeric comparison, then math-verify/sympy in a
    helper process under a hard time-out (:mod:`.mathverify`).
``list``
    Items split on commas/semicolons/"and"; compared in order, or as a multiset when
    ``unordered=True``. When the kind was only inferred, the same items in another order are left
    undecided (nobody said whether order matters).
``set``
    A list compared as a multiset (``unordered`` implied).

Intervals and points ("[0, 9)", "(1, \\frac92)", unions with ``\\cup``) keep their brackets under
``math`` and an inferred kind: "(0,9)" and "[0,9)" differ. Strings that math-verify can read
(``$...$``, several ``\\boxed{}``) go to it as they were written, not as cleaned.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from .mathverify import MathVerifier

__all__ = [
    "KINDS",
    "MatchResult",
    "Number",
    "answers_match",
    "match_answer",
    "extract_answer",
    "clean_answer",
    "normalize_text",
    "parse_number",
    "infer_kind",
    "canonical_kind",
    "DEFAULT_REL_TOL",
]

KINDS = ("numeric", "choice", "yesno", "text", "math", "list", "set")
DEFAULT_REL_TOL = 1e-4
MAX_PREDICTION_CHARS = 2000  # longer predictions (and 8x the reference) are left undecided

_KIND_ALIASES = {
    "number": "numeric", "num": "numeric", "integer": "numeric", "int": "numeric",
    "float": "numeric", "decimal": "numeric",
    "mc": "choice", "mcq": "choice", "multiple_choice": "choice", "multiple-choice": "choice",
    "multi_choice": "choice", "multichoice": "choice",
    "option": "choice", "options": "choice",
    "yes_no": "yesno", "yes-no": "yesno", "yes/no": "yesno", "bool": "yesno", "boolean": "yesno", "binary": "yesno",
    "string": "text", "str": "text", "free_form": "text", "free-form": "text", "freeform": "text",
    "open": "text", "open_ended": "text", "open-ended": "text", "short": "text",
    "latex": "math", "expression": "math", "formula": "math", "symbolic": "math",
    "sequence": "list", "ordered_list": "list", "unordered_list": "set", "multiset": "set",
}


def canonical_kind(kind: str | None) -> str | None:
    """Map a kind name or alias to one of :data:`KINDS`; None stays None.

    Raises ValueError for an unknown kind (a typo in a task file should not silently become
    "text").
    """
    if kind is None:
        return None
    k = str(kind).strip().lower()
    if not k:
        return None
    k = _KIND_ALIASES.get(k, k)
    if k not in KINDS:
        raise ValueError(f"unknown answer kind {kind!r}; use one of {', '.join(KINDS)}")
    return k


@dataclass(frozen=True)
class MatchResult:
    """The verdict of the rules on one (prediction, reference) pair.

    ``match`` is True/False when the rules decide and None when they cannot (free-form text that
    differs, math that math-verify could not prove equal, a time-out). ``method`` names the rule
    that decided, for reward breakdowns and debugging.
    """

    match: bool | None
    kind: str
    method: str

    @property
    def decided(self) -> bool:
        return self.match is not None

    def __bool__(self) -> bool:
        return self.match is True


# --------------------------------------------------------------------------------- cleaning
_TRANSLATE = str.maketrans({
    "\u2212": "-", "\u2012": "-", "\u2013": "-", "\u2010": "-", "\u2011": "-", "\ufe63": "-",
    "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u00ab": '"', "\u00bb": '"',
    "\u200b": "", "\u200c": "", "\u200d": "", "\ufeff": "",
})

_MD = re.compile(r"\*\*|__|`")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S)
_PREFIX = re.compile(
    r"^(?:(?:so|thus|therefore|hence)\s*,?\s+)?"
    r"(?:(?:the|my|our)\s+)?(?:final\s+|correct\s+|best\s+|right\s+)?"
    r"(?:answer|option|choice|result)(?:\s+(?:is|would\s+be|will\s+be|should\s+be))?\s*[:=]?\s*",
    re.I,
)
_PREFIX2 = re.compile(r"^(?:it\s+is|it's|it\s+was|this\s+is|that\s+is|there\s+(?:is|are|were|was))\s+", re.I)
_LATEX_WRAPPERS = re.compile(
    r"\\(?:text|textbf|textit|textnormal|textrm|mathrm|mathbf|mathit|operatorname|mbox)\s*\{([^{}]*)\}"
)
# Spacing and sizing commands carry no meaning. ``\\`` (a matrix or array row break) is matched
# first and kept: without that, the ``\ `` (thin space) rule ate half of it ("1 & 2 \\ 3" became
# "1 & 2 \3").
_LATEX_DROP = re.compile(r"\\\\|\\(?:left|right|displaystyle|big|Big|bigg|Bigg)\b|\\[!,;: ]")
# ``32,\! 349`` and ``32{,}349``: the MATH dataset's way to write a thousands separator.
_LATEX_THOUSANDS = re.compile(r"(?<=\d),\\!\s*(?=\d{3}(?!\d))")
_ANSWER_WRAP = re.compile(r"^<answer>(.*)</answer>$", re.S)
_DELIMS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_TRAILING = ".。!！;；,，:："


def _last_boxed(s: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (brace-balanced)."""
    i = max(s.rfind("\\boxed"), s.rfind("\\fbox"))
    if i < 0:
        return None
    j = s.find("{", i)
    if j < 0 or s[i:j].strip() not in ("\\boxed", "\\fbox"):
        rest = s[i:].split(None, 1)  # "\boxed 5"
        return rest[1].strip() if len(rest) == 2 else None
    depth = 0
    for k in range(j, len(s)):
        c = s[k]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return s[j + 1 : k]
    return None


_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
# What may separate several boxes that together form one answer ("\boxed{1}, \boxed{2}",
# "\(\boxed{1}\) and \(\boxed{-2}\)"). "or" is not among them: alternatives are a hedge.
_BOX_GAP = re.compile(r"(?:\s|[,;&$]|\\[()\[\]]|\\q?quad|\\text\s*\{\s*and\s*\}|\band\b)*")


def _boxes(s: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every brace-balanced ``\\boxed{...}`` / ``\\fbox{...}``."""
    out = []
    for m in _BOX_OPEN.finditer(s):
        if out and m.start() < out[-1][1]:
            continue  # a box nested in the previous one
        depth = 0
        for k in range(m.end() - 1, len(s)):
            if s[k] == "{":
                depth += 1
            elif s[k] == "}":
                depth -= 1
                if depth == 0:
                    out.append((m.start(), k + 1, s[m.end() : k]))
                    break
    return out


def _unbox(s: str) -> str | None:
    """The boxed answer of ``s``: the box, or several boxes read as one answer, or None.

    One box (or the same box repeated) is the answer. Several boxes with only separators between
    them are one list answer ("1, 2"): keeping the last box alone read "\\boxed{1}\\boxed{2}" as 2.
    Several boxes with prose between them are unwrapped in place, so that no single box is
    taken for the whole answer.
    """
    boxes = _boxes(s)
    if not boxes:
        return _last_boxed(s)  # "\\boxed 5"
    contents = [c.strip() for _, _, c in boxes]
    if len(set(contents)) == 1:
        return contents[-1]
    gaps = [s[a[1] : b[0]] for a, b in zip(boxes, boxes[1:])]
    if all(_BOX_GAP.fullmatch(g) for g in gaps):
        return ", ".join(contents)
    parts, last = [], 0
    for start, end, content in boxes:
        parts += [s[last:start], content]
        last = end
    return "".join(parts + [s[last:]])


def extract_answer(text: str | None) -> str | None:
    """The final answer of an assistant response, as DeepEyesV2 reads it.

    Looks after the last ``</think>`` for the first ``<answer>...</answer>`` block and returns
    its stripped content; falls back to the last ``\\boxed{...}`` in that region; else None.
    """
    if not text:
        return None
    cut = text.rfind("</think>")
    tail = text[cut + 8 :] if cut >= 0 else text
    m = _ANSWER_TAG.search(tail)
    if m:
        return m.group(1).strip()
    boxed = _last_boxed(tail)
    return boxed.strip() if boxed is not None else None


def _keep_row_breaks(m: re.Match) -> str:
    return m.group() if m.group() == "\\\\" else ""


def clean_answer(text: str) -> str:
    """Strip the packaging around an answer, keeping its content and case.

    NFKC (full-width digits and letters become ASCII), unicode minus/dashes to ``-``, the last
    ``\\boxed{}``, math delimiters, ``\\text{}`` wrappers, markdown emphasis, answer prefixes
    ("The final answer is", "Answer:", "Option"), enclosing quotes and trailing punctuation.
    """
    s = text
    if not s.isascii():
        s = unicodedata.normalize("NFKC", s).translate(_TRANSLATE)
    s = s.strip()
    if s.startswith("<answer>"):  # a whole response pasted as the answer
        m = _ANSWER_WRAP.match(s)
        if m:
            s = m.group(1).strip()
    if "\\" in s:
        if "\\boxed" in s or "\\fbox" in s:
            b = _unbox(s)
            if b is not None:
                s = b.strip()
        s = _LATEX_WRAPPERS.sub(r"\1", s)
        if ",\\!" in s:
            s = _LATEX_THOUSANDS.sub(",", s)
        s = _LATEX_DROP.sub(_keep_row_breaks, s)
        s = (s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\cfrac", "\\frac")
             .replace("\\%", "%")
             .replace("\\$", "$").replace("^\\circ", "°").replace("^{\\circ}", "°"))
    if "*" in s or "_" in s or "`" in s:
        s = _MD.sub("", s).strip()
    for a, b in _DELIMS:
        if len(s) > len(a) + len(b) and s.startswith(a) and s.endswith(b):
            s = s[len(a) : -len(b)].strip()
            break
    if "{,}" in s:
        s = s.replace("{,}", ",")
    m = _PREFIX.match(s)
    if m and m.end() < len(s):
        s = s[m.end() :]
    m = _PREFIX2.match(s)
    if m and m.end() < len(s):
        s = s[m.end() :]
    s = s.strip().rstrip(_TRAILING).strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
        s = s[1:-1].strip()
    return s


_PUNCT = re.compile(r"[^\w\s]")
# In text answers a number keeps its decimal point ("1.000" is one, "1,000" a thousand); only a
# well-formed thousands separator is dropped. Without this, punctuation stripping made "1.000" and
# "1,000" the same text.
_PUNCT_NUM = re.compile(r"[^\w\s.,]|(?<!\d)[.,]|[.,](?!\d)")
_THOUSANDS = re.compile(r"(?<![\d.,])[1-9]\d{0,2}(?:,\d{3})+(?![\d,])")
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


def _strip_accents(s: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", s) if not unicodedata.combining(c))


def normalize_text(text: str) -> str:
    """SQuAD-style normalisation of a cleaned answer: lower case, no accents, punctuation,
    articles or repeated whitespace."""
    s = clean_answer(text).lower()
    if not s.isascii():
        s = _strip_accents(s)
    if any(c.isdigit() for c in s):
        s = _THOUSANDS.sub(lambda m: m.group().replace(",", ""), s)
        s = _PUNCT_NUM.sub(" ", s)
    else:
        s = _PUNCT.sub(" ", s)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


# --------------------------------------------------------------------------------- numbers
@dataclass(frozen=True)
class Number:
    """A parsed numeric answer.

    ``decimals``: digits after the point in the literal (0 for integers, None for fractions);
    ``alternatives``: other values the literal may mean (``50%`` may mean 0.5, ``5 million``
    may mean 5) — equality with any counts.
    """

    value: Fraction
    decimals: int | None
    is_int: bool
    percent: bool = False
    unit: str | None = None
    alternatives: tuple[Fraction, ...] = ()

    def values(self) -> tuple[Fraction, ...]:
        return (self.value,) + self.alternatives


_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100,
}
_SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
_HEDGE_UNIT_WORDS = frozenset(
    "or and not to than more less plus minus approximately about over under nor".split()
)

_UNIT = r"(?P<unit>(?:[^\W\d_]|[°'\"/])[^\d]{0,24}?(?:\^?\{?[23]\}?)?)"
_NUM_RE = re.compile(
    r"^(?:approximately|approx\.?|about|around|roughly|nearly|~|≈)?\s*"
    r"(?P<sign>[-+])?\s*(?P<cur>[$€£¥₹])?\s*(?P<sign2>[-+])?\s*"
    # A thousands group never follows a leading 0: "0,111" is not 111 (see _DECIMAL_COMMA).
    r"(?P<int>[1-9]\d{0,2}(?:,\d{3})+|[1-9]\d{0,2}(?:[ ']\d{3})+|\d+)?(?:\.(?P<frac>\d+))?"
    r"(?:\s*(?:e|(?:x|×|\*|\\times|\\cdot)\s*10\s*\^)\s*\{?\s*(?P<exp>[-+]?\d{1,3})\s*\}?)?"
    r"\s*(?P<pct>%|percent\b|per\s*cent\b|pct\b)?"
    r"\s*(?P<scale>thousand|million|billion|trillion)?"
    r"\s*" + _UNIT + r"?\s*$",
    re.I,
)
_FRAC_RE = re.compile(
    r"^(?P<sign>-)?\s*(?:\\frac\s*\{\s*(?P<a>-?\d+(?:\.\d+)?)\s*\}\s*\{\s*(?P<b>-?\d+(?:\.\d+)?)\s*\}"
    r"|\\frac\s*(?P<c>\d)\s*(?P<d>\d)"
    r"|(?P<e>-?\d+(?:\.\d+)?)\s*/\s*(?P<f>\d+(?:\.\d+)?))"
    r"\s*(?P<pct>%)?\s*" + _UNIT + r"?\s*$",
    re.I,
)
# A comma that cannot be a thousands separator ("0,111", "1,22", "1000,99") is a decimal comma, as
# in most of Europe; math-verify reads them the same way.
_DECIMAL_COMMA = re.compile(r"^(?P<sign>[-+])?(?P<int>\d+),(?P<frac>\d+)$")
_NUM_TOKEN = re.compile(
    r"(?<![\w.])\d+\s*/\s*\d+(?![\w.])|(?<![\w./])[-+]?\d+(?:,\d{3})*(?:\.\d+)?(?![\w./])"
)


def _unit_ok(unit: str | None) -> bool:
    if not unit:
        return True
    words = unit.lower().replace("/", " ").split()
    return len(words) <= 3 and not (_HEDGE_UNIT_WORDS.intersection(words))


# Spellings of one unit, so that "30°" and "30 degrees" agree instead of being left undecided.
_UNIT_SYNONYMS = {"degree": "°", "deg": "°"}


def _norm_unit(unit: str | None) -> str | None:
    if not unit:
        return None
    u = unit.strip().lower().replace(" ", "").replace("{", "").replace("}", "").replace("^", "")
    if u.endswith("s") and len(u) > 2:  # "apples" ~ "apple", "meters" ~ "meter"
        u = u[:-1]
    return _UNIT_SYNONYMS.get(u, u) or None


def _decimal_comma(s: str) -> Number | None:
    m = _DECIMAL_COMMA.match(s)
    if m is None:
        return None
    whole, frac = m.group("int"), m.group("frac")
    if len(frac) == 3 and whole[0] != "0" and len(whole) <= 3:
        return None  # "1,234": a thousands separator, read by _NUM_RE
    val = Fraction(f"{whole}.{frac}")
    return Number(-val if m.group("sign") == "-" else val, len(frac), False)


def parse_number(text: str) -> Number | None:
    """Parse a whole (already cleaned) answer as one number, or None.

    Accepts ``-1,234.5``, ``$1,200``, ``12 cm``, ``50%``, ``1.2e3``, ``3 x 10^5``, ``1/2``,
    ``\\frac{1}{2}``, ``\\frac12``, ``six``, ``5 million``. Refuses anything with a second number
    or a hedge ("12 or more").
    """
    s = text.strip()
    if not s or len(s) > 120:
        return None
    w = s.lower()
    if w in _WORDS:  # only a bare word: "One Direction" is not the number 1
        s = str(_WORDS[w])
    if "/" in s or "frac" in s:
        m = _FRAC_RE.match(s)
        if m:
            if m.group("a") is not None:
                a, b = m.group("a"), m.group("b")
            elif m.group("c") is not None:
                a, b = m.group("c"), m.group("d")
            else:
                a, b = m.group("e"), m.group("f")
            unit = m.group("unit")
            if not _unit_ok(unit):
                return None
            try:
                den = Fraction(b)
                if den == 0:
                    return None
                val = Fraction(a) / den
            except (ValueError, ZeroDivisionError):
                return None
            if m.group("sign"):
                val = -val
            pct = bool(m.group("pct"))
            alts = (val / 100,) if pct else ()
            return Number(val, None, val.denominator == 1, pct, unit, alts)
    if "," in s:
        dec = _decimal_comma(s)
        if dec is not None:
            return dec
    m = _NUM_RE.match(s)
    if not m or (m.group("int") is None and m.group("frac") is None):
        return None
    unit = m.group("unit")
    if not _unit_ok(unit):
        return None
    int_part = (m.group("int") or "0").replace(",", "").replace(" ", "").replace("'", "")
    frac = m.group("frac")
    try:
        val = Fraction(int_part + ("." + frac if frac else ""))
    except ValueError:
        return None
    exp = m.group("exp")
    if exp is not None:
        val *= Fraction(10) ** int(exp)
    if (m.group("sign") == "-") != (m.group("sign2") == "-"):
        val = -val
    pct = bool(m.group("pct"))
    alts: list[Fraction] = []
    if pct:
        alts.append(val / 100)
    scale = m.group("scale")
    if scale:
        alts.append(val * _SCALES[scale.lower()])
    decimals = len(frac) if frac else 0
    is_int = not frac and exp is None
    return Number(val, decimals, is_int, pct, unit, tuple(alts))


def _round_to(x: Fraction, decimals: int) -> Fraction:
    q = Fraction(10) ** decimals
    y = abs(x) * q
    r = Fraction(int(y + Fraction(1, 2)), 1) / q  # round half away from zero
    return r if x >= 0 else -r


def _values_close(p: Fraction, r: Fraction, ref: Number, pred: Number, tol: float | None, exact: bool) -> bool:
    if p == r:
        return True
    if exact:
        return False
    if tol is not None:
        return abs(p - r) <= abs(r) * Fraction(tol) if r != 0 else abs(p) <= Fraction(tol)
    if ref.is_int:
        return False  # integers compare exactly
    if r != 0 and abs(p - r) <= abs(r) * Fraction(DEFAULT_REL_TOL):
        return True
    # The prediction is more precise than the reference: round it to the reference's decimals.
    if ref.decimals and pred.decimals is not None and pred.decimals > ref.decimals:
        return _round_to(p, ref.decimals) == r
    return False


def _compare_numbers(pred: Number, ref: Number, tol: float | None, exact: bool) -> bool | None:
    equal = any(
        _values_close(p, r, ref, pred, tol, exact) for p in pred.values() for r in ref.values()
    )
    pu, ru = _norm_unit(pred.unit), _norm_unit(ref.unit)
    if pu and ru and pu != ru:
        return None if equal else False  # "5 cm" vs "5 m": cannot convert units here
    return equal


# --------------------------------------------------------------------------------- kinds
_YES = frozenset({"yes", "true", "yeah", "yep", "是", "是的", "对"})
_NO = frozenset({"no", "false", "nope", "否", "不", "不是"})
_SHORT_YESNO = {"y": "yes", "n": "no"}  # only as the whole answer
_LETTER_FULL = re.compile(r"^[(\[]?\s*([A-Za-z])\s*[)\]]?\s*[.:)]?$")
_LETTER_LEAD = re.compile(r"^\(?([A-Z])(?:\)|[.:]|\s*[-:)])\s*(\S.*)$", re.S)  # "(B) red", "B. red"
_LETTER_START = re.compile(r"^\(?([A-Z])(?:\)|[.:,]|\s|$)")
_CHOICE_REF = re.compile(r"^\([A-Z]\)\s*\S|^[A-Z][.)]\s+\S")
_LETTER_SPACE = re.compile(r"^([A-Z])\s+(\S.*)$", re.S)
_LETTER_MULTI = re.compile(r"^\(?[A-Z]\)?(?:\s*(?:,|;|&|/|\band\b|\bor\b)\s*\(?[A-Z]\)?)+$")
_LETTERS = re.compile(r"[A-Z]")
# An explicit statement of the choice: "Answer: C", "the best answer is: (A)", "option **B**".
_STATED = re.compile(
    r"\b(?i:answer|option|choice)(?:\s+(?i:is|would\s+be|should\s+be|will\s+be))?\s*[:：]?\s*"
    r"[*_(\[]*\s*([A-Z])(?![A-Za-z0-9])"
)
_CLOSING = re.compile(r"[\s)*_\].!]*")  # what may follow a final statement: closing marks only
# After a leading letter, words that take the letter back ("(C), but that is wrong").
_DOUBT = re.compile(r"\b(?:not|wrong|incorrect|but|or|maybe|perhaps|unless|except|however)\b|n't\b", re.I)
_PAREN_LETTER = re.compile(r"\(([A-Z])\)")
_MATH_SYMBOLS = re.compile(r"\\[A-Za-z]+|[\^_=<>≤≥√π∞]")
_MATH_SHAPES = re.compile(
    r"(?<![A-Za-z])\d*[a-z](?![A-Za-z])\s*[-+*/]|[-+*/]\s*\d*[a-z](?![A-Za-z])"
    r"|\d[a-z](?![A-Za-z])|(?<![A-Za-z])[a-z]{1,6}\s*\("
)
_WORDISH = re.compile(r"[A-Za-z]{3,}")
_MATH_WORDS = frozenset(
    "sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh log ln exp sqrt lim max min "
    "det mod gcd lcm abs frac pi inf".split()
)


_LATEX_ENV = re.compile(r"\\(?:begin|end)\s*\{[A-Za-z*]+\}")


def _looks_math(s: str) -> bool:
    """LaTeX or a formula ("2x+1", "f(x)"), not prose that happens to contain a dash."""
    env = "\\begin" in s
    if env:
        s = _LATEX_ENV.sub(" ", s)  # "pmatrix" must not count as an English word
    for m in _WORDISH.finditer(s):
        if m.start() > 0 and s[m.start() - 1] == "\\":
            continue  # a LaTeX command: \frac, \sqrt
        if m.group().lower() not in _MATH_WORDS:
            return False  # an English word: prose, not a formula
    return env or bool(_MATH_SYMBOLS.search(s) or _MATH_SHAPES.search(s))


_LIST_SPLIT = re.compile(r"\s*(?:;|\n|、|\||\band\b|,(?!\d{3}(?!\d)))\s*")
# Negations and hedges: a sentence with one of these does not simply state its number.
_HEDGED = re.compile(
    r"\b(?:not|no|never|isn't|aren't|wasn't|cannot|can't|neither|nor|or|between|more|less|than|"
    r"maybe|perhaps|either|least|most|over|under|except|unless|if)\b|n't\b",
    re.I,
)


def _yesno(text: str) -> str | None:
    """"yes"/"no" when the answer states one polarity and never the other, else None."""
    toks = normalize_text(text).split()
    if not toks or len(toks) > 40:
        return None
    if len(toks) == 1 and toks[0] in _SHORT_YESNO:
        return _SHORT_YESNO[toks[0]]
    if len(toks) > 6 and toks[0] not in _YES and toks[0] not in _NO:
        return None  # a long answer must lead with its verdict
    pol = {"yes" if t in _YES else "no" for t in toks if t in _YES or t in _NO}
    return pol.pop() if len(pol) == 1 else None


def _split_list(text: str) -> list[str]:
    s = clean_answer(text)
    if len(s) >= 2 and s[0] + s[-1] in ("[]", "()", "{}"):
        s = s[1:-1]
    s = s.replace("\\{", "").replace("\\}", "")
    return [p for p in (x.strip() for x in _LIST_SPLIT.split(s)) if p]


def infer_kind(reference: str, options: Mapping[str, str] | None = None) -> str:
    """Guess the answer kind from the reference (and the options, when known)."""
    if options:
        return "choice"
    s = clean_answer(reference)
    low = s.lower()
    if low in _YES or low in _NO:
        return "yesno"
    if parse_number(s) is not None:
        return "numeric"
    if (_LETTER_FULL.match(s) and s.strip("().:").isupper()) or _CHOICE_REF.match(s):
        return "choice"
    if _looks_math(s):
        return "math"
    pieces = _intervals(s)
    if pieces and _surely_interval(pieces):  # "[0,9)" is an interval, not the list 0, 9
        return "math"
    parts = _split_list(s)
    if len(parts) >= 2 and all(len(p.split()) <= 4 for p in parts):
        return "list"
    return "text"


def _stated_choice(s: str) -> tuple[bool, frozenset[str] | None]:
    """(found, letters) from explicit statements such as "The best answer is: (A)".

    A model often discusses other options before it commits ("(D) cannot be right ... The best
    answer is: (A)"), so a statement that ends the answer outranks a letter that leads it. The
    statement counts only when it ends the text and every statement names the same letter;
    otherwise the answer is left undecided (found, None).
    """
    stated = list(_STATED.finditer(s))
    if not stated:
        return False, None
    last = stated[-1]
    if _CLOSING.fullmatch(s, last.end()) is None:
        return True, None  # the text goes on after its last statement: a hedge or a retraction
    letters = {m.group(1) for m in stated}
    return True, (frozenset(letters) if len(letters) == 1 else None)


def _choice_letters(
    text: str, options: Mapping[str, str] | None, raw: str | None = None
) -> frozenset[str] | None:
    """The option letter(s) a (cleaned) answer names, or None when it names none.

    ``raw``: the answer before cleaning, where explicit statements are looked for (cleaning strips
    a leading "The best answer is:", which would hide the first of two conflicting statements).
    """
    s = text.strip()
    m = _LETTER_FULL.match(s)
    if m:
        return frozenset(m.group(1).upper())
    if _LETTER_MULTI.match(s):
        return frozenset(_LETTERS.findall(s))
    norm = normalize_text(s) if options else ""
    if options:
        for k, v in options.items():
            if norm and norm == normalize_text(str(v)):
                return frozenset(k.upper())
    found, stated = _stated_choice(s if raw is None else raw.strip())
    if found:
        return stated
    m = _LETTER_LEAD.match(s)
    if m:
        letter, rest = m.group(1), m.group(2)
        other = _LETTER_START.match(rest)
        if other:  # "B.C", "(B) (C)": two letters, a hedge
            return frozenset((letter, other.group(1)))
        if _DOUBT.search(rest) or any(x != letter for x in _PAREN_LETTER.findall(rest)):
            return None  # "(D) is tempting, but (A) fits": the leading letter is not the answer
        if options and letter in options:
            if normalize_text(rest) == normalize_text(str(options[letter])):
                return frozenset(letter)
            for k, v in options.items():  # "(B) blue" where blue is C: contradictory
                if normalize_text(rest) == normalize_text(str(v)):
                    return frozenset()
        return frozenset(letter)
    m = _LETTER_SPACE.match(s)  # "A cat": article or letter? only the options can tell
    if m and options and m.group(1) in options:
        if normalize_text(m.group(2)) == normalize_text(str(options[m.group(1)])):
            return frozenset(m.group(1))
    return None


# --------------------------------------------------------------------------------- matchers
def _match_numeric(
    pred: str, ref: str, tol: float | None, exact: bool, math_verify: Any, kind: str,
    raw: tuple[str, str] | None = None,
) -> MatchResult:
    r = parse_number(ref)
    if r is None:
        return _match_text(pred, ref, kind)
    p = parse_number(pred)
    if p is not None:
        return MatchResult(_compare_numbers(p, r, tol, exact), kind, "numeric")
    if math_verify and _looks_math(pred):
        return _math_verify(pred, ref, kind, math_verify, raw)
    # A short sentence holding exactly one number ("There are 12 apples in total").
    words = pred.split()
    nums = _NUM_TOKEN.findall(pred)
    if len(nums) == 1 and len(words) <= 12 and not _HEDGED.search(pred):
        p = parse_number(nums[0])
        if p is not None and _compare_numbers(p, r, tol, exact):
            return MatchResult(True, kind, "numeric_in_sentence")
    return MatchResult(None, kind, "numeric_unparsed")


def _match_text(pred: str, ref: str, kind: str = "text") -> MatchResult:
    np_, nr = normalize_text(pred), normalize_text(ref)
    if not np_:
        return MatchResult(False, kind, "empty")
    if np_ == nr:
        return MatchResult(True, kind, "text")
    p, r = parse_number(pred), parse_number(ref)
    if p is not None and r is not None:
        return MatchResult(_compare_numbers(p, r, None, True), kind, "numeric_exact")
    return MatchResult(None, kind, "text_differs")


def _match_yesno(pred: str, ref: str) -> MatchResult:
    r = _yesno(ref)
    if r is None:
        return _match_text(pred, ref, "yesno")
    p = _yesno(pred)
    if p is None:
        return MatchResult(None, "yesno", "yesno_unparsed")
    return MatchResult(p == r, "yesno", "yesno")


def _match_choice(
    pred: str, ref: str, options: Mapping[str, str] | None, raw_pred: str | None = None
) -> MatchResult:
    opts = {str(k).strip().upper(): str(v) for k, v in options.items()} if options else None
    r = _choice_letters(ref, opts)
    p = _choice_letters(pred, opts, raw_pred)
    if r:
        if p is None:
            return MatchResult(None, "choice", "choice_unparsed")
        return MatchResult(p == r, "choice", "choice")
    # The reference is free text that is not one of the options: compare texts.
    if p and opts and len(p) == 1:
        (letter,) = p
        if letter in opts:
            return _with_kind(_match_text(opts[letter], ref), "choice")
    return _with_kind(_match_text(pred, ref), "choice")


def _with_kind(res: MatchResult, kind: str) -> MatchResult:
    return MatchResult(res.match, kind, res.method)


# A row break (two backslashes) is matched first and kept, as in clean_answer.
_LATEX_NORM = re.compile(r"\\\\|\s+|\\[!,;: ]|\\left|\\right|\\displaystyle")
_ASSIGN = re.compile(r"^[A-Za-z][A-Za-z0-9_']*\s*=\s*(.+)$", re.S)


def _latex_key(s: str) -> str:
    s = _LATEX_NORM.sub(_keep_row_breaks, s)
    return s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").rstrip(".")


_MATH_SPANS = re.compile(r"\$\$.*?\$\$|\$.*?\$|\\\(.*?\\\)|\\\[.*?\\\]", re.S)


def _hedged_prose(text: str) -> bool:
    """Does the text outside its formulas hedge or negate ("or", "not", "between", ...)?"""
    return bool(_HEDGED.search(_MATH_SPANS.sub(" ", text)))


def _verify_once(verifier: Any, gold: str, pred: str):
    if verifier is True:
        from .mathverify import math_equal  # local: the helper process starts on first use

        return math_equal(gold, pred)
    return verifier.verify(gold, pred)


def _math_verify(
    pred: str, ref: str, kind: str, verifier: Any, raw: tuple[str, str] | None = None
) -> MatchResult:
    """math-verify on the ORIGINAL strings, then on the cleaned ones only if those did not parse.

    math-verify does its own extraction (every ``\\boxed{}``, each ``$...$`` formula, "x = 5"), which
    cleaning defeats: it keeps one box and strips ``$`` across two formulas ("$1$ and $2$" becomes
    "1$ and $2"). Only its True is trusted; its False leaves the pair undecided, because its
    parser fails on answers that are equal.
    Prose that hedges ("between $5$ and $6$", "$5$ or $6$") is never handed over: math-verify takes
    the last formula of a text as its answer.
    """
    if _hedged_prose(pred if raw is None else raw[0]):
        return MatchResult(None, kind, "math_verify:hedged")
    second_try = raw is not None and raw != (pred, ref)
    if second_try:
        res = _verify_once(verifier, raw[1], raw[0])
        if res.equal is True:
            return MatchResult(True, kind, "math_verify")
        if res.status not in ("unparsed", "error"):
            return MatchResult(None, kind, f"math_verify:{res.status}")  # a verdict or a time-out
    res = _verify_once(verifier, ref, pred)
    if res.equal is True:
        return MatchResult(True, kind, "math_verify_cleaned" if second_try else "math_verify")
    return MatchResult(None, kind, f"math_verify:{res.status}")


def _match_math(
    pred: str, ref: str, tol: float | None, math_verify: Any, raw: tuple[str, str] | None = None
) -> MatchResult:
    if _latex_key(pred) == _latex_key(ref):
        return MatchResult(True, "math", "latex_exact")
    if "=" not in ref:
        m = _ASSIGN.match(pred)  # "x = 5" for a reference "5"
        if m:
            pred = m.group(1).strip()
            if _latex_key(pred) == _latex_key(ref):
                return MatchResult(True, "math", "latex_exact")
    p, r = parse_number(pred), parse_number(ref)
    if p is not None and r is not None:
        return MatchResult(_compare_numbers(p, r, tol, False), "math", "numeric")
    if not math_verify:
        return MatchResult(None, "math", "math_unverified")
    if len(pred) > 1000:
        return MatchResult(None, "math", "math_too_long")
    return _math_verify(pred, ref, "math", math_verify, raw)


# --------------------------------------------------------------------------------- intervals
# "[0, 9)", "(-\infty, 2]", "x \in (2,12) \cup (12,102)": the brackets are part of the answer
# (open or closed), so an interval must not be compared as a list of its endpoints.
_INTERVAL = re.compile(r"([\[(])\s*([^,\[\]()]+?)\s*,\s*([^,\[\]()]+?)\s*([\])])")
_UNION = re.compile(r"\s*(?:\\cup|∪)\s*")
_IN_PREFIX = re.compile(r"^[A-Za-z]\s*(?:\\in|∈)\s*")
_INFINITE = re.compile(r"[-+]?\s*(?:\\infty|∞|inf|infinity)")


def _intervals(s: str) -> list[tuple[str, str, str, str]] | None:
    """(left bracket, low, high, right bracket) of each piece of an interval or union, or None."""
    if s[:1] not in "[(":
        s = _IN_PREFIX.sub("", s)
        if s[:1] not in "[(":
            return None
    out = []
    for piece in _UNION.split(s):
        m = _INTERVAL.fullmatch(piece)
        if m is None:
            return None
        out.append(m.groups())
    return out


def _surely_interval(pieces: list[tuple[str, str, str, str]]) -> bool:
    """A union, a mixed bracket pair or an infinite end: no list or point is written so."""
    return len(pieces) > 1 or any(
        a + d in ("[)", "(]") or _INFINITE.fullmatch(lo) or _INFINITE.fullmatch(hi) for a, lo, hi, d in pieces
    )


def _endpoint(pred: str, ref: str, tol: float | None) -> bool | None:
    pi, ri = _INFINITE.fullmatch(pred), _INFINITE.fullmatch(ref)
    if pi or ri:
        return bool(pi and ri) and pred.lstrip().startswith("-") == ref.lstrip().startswith("-")
    return match_answer(pred, ref, tolerance=tol, math_verify=False).match


def _match_intervals(pred: str, ref: str, tol: float | None, explicit_math: bool) -> MatchResult | None:
    """Compare two intervals (or points, or unions) piece by piece; None when not both intervals.

    A bracket that differs at a finite end makes them different ("(0,9)" vs "[0,9)") when the
    reference surely is an interval, or under ``kind="math"``; "[1, 2]" vs "(1, 2)" under an
    inferred kind may be two lists, so it stays undecided. Unions are only ever proved equal here
    (their pieces may be listed in another order): anything else goes on to math-verify.
    """
    pi, ri = _intervals(pred), _intervals(ref)
    if pi is None or ri is None or len(pi) != len(ri):
        return None
    ends: list[bool | None] = []
    brackets_differ = False
    for (pa, plo, phi, pd), (ra, rlo, rhi, rd) in zip(pi, ri):
        ends += [_endpoint(plo, rlo, tol), _endpoint(phi, rhi, tol)]
        # a bracket at an infinite end says nothing ("[-\\infty" is a common slip for "(-\\infty")
        brackets_differ |= pa != ra and not _INFINITE.fullmatch(rlo)
        brackets_differ |= pd != rd and not _INFINITE.fullmatch(rhi)
    if all(e is True for e in ends) and not brackets_differ:
        return MatchResult(True, "math", "interval")
    if len(ri) > 1:
        return None
    if False in ends:
        return MatchResult(False, "math", "interval")
    if brackets_differ:
        sure = explicit_math or _surely_interval(ri) or _surely_interval(pi)
        return MatchResult(False if sure else None, "math", "interval_brackets")
    return None


# --------------------------------------------------------------------------------- lists
def _bipartite_perfect(ok: list[list[bool]]) -> bool:
    n = len(ok)
    match_of: list[int] = [-1] * n

    def augment(i: int, seen: list[bool]) -> bool:
        for j in range(n):
            if ok[i][j] and not seen[j]:
                seen[j] = True
                if match_of[j] < 0 or augment(match_of[j], seen):
                    match_of[j] = i
                    return True
        return False

    return all(augment(i, [False] * n) for i in range(n))


def _match_list(
    pred: str, ref: str, unordered: bool, tol: float | None, math_verify: Any,
    kind: str = "list", inferred: bool = False,
) -> MatchResult:
    """Items compared in order, or as a multiset (``unordered``).

    For a list kind that was only inferred from the reference, nobody said that order matters:
    the same items in another order ("1, -2" for the roots "-2, 1") are left undecided instead of
    being called wrong.
    """
    ps, rs = _split_list(pred), _split_list(ref)
    if not ps:
        return MatchResult(False, kind, "empty")
    if len(ps) != len(rs) or len(rs) > 64:
        return MatchResult(None, kind, "list_length")
    if not unordered:
        results = [match_answer(p, r, tolerance=tol, math_verify=math_verify).match for p, r in zip(ps, rs)]
        if all(x is True for x in results):
            return MatchResult(True, kind, "list_ordered")
        if not inferred:
            return MatchResult(False if False in results else None, kind, "list_ordered")
    grid = [[match_answer(p, r, tolerance=tol, math_verify=math_verify).match for r in rs] for p in ps]
    if _bipartite_perfect([[x is True for x in row] for row in grid]):
        if unordered:
            return MatchResult(True, kind, "list_unordered")
        return MatchResult(None, kind, "list_order_unknown")
    undecided = any(x is None for row in grid for x in row)
    return MatchResult(None if undecided else False, kind, "list_unordered")


# Signs that a string is LaTeX that math-verify can read better than the rules ("$1$ and $2$").
_LATEXISH = re.compile(r"\$|\\[(\[{]|\\(?:boxed|frac|dfrac|sqrt|cup|pm|infty|begin)\b")


def _last_resort(res: MatchResult, raw: tuple[str, str], kind: str, math_verify: Any) -> MatchResult:
    """An inferred list or math pair the rules left open: math-verify on the original strings.

    Skipped when the rules found the same items in another order (math-verify compares sets and
    would call them equal, but the order may matter) and for text, where math-verify reads words
    as products of symbols.
    """
    if res.match is not None or not math_verify or res.method.startswith(("math_verify", "list_order")):
        return res
    if not (_LATEXISH.search(raw[0]) or _LATEXISH.search(raw[1])) or len(raw[0]) > 1000:
        return res
    mv = _math_verify(raw[0], raw[1], kind, math_verify)
    return mv if mv.match is True else res


def match_answer(
    prediction: str | None,
    reference: str,
    *,
    kind: str | None = None,
    options: Mapping[str, str] | None = None,
    tolerance: float | None = None,
    unordered: bool = False,
    math_verify: bool | MathVerifier = True,
) -> MatchResult:
    """Compare a prediction with a reference; see the module docstring for the rules.

    Args:
        prediction: the model's final answer (the content of ``<answer>``); None or blank never
            matches.
        reference: the ground truth.
        kind: numeric, choice, yesno, text, math, list or set (aliases accepted); None infers it
            from the reference. Unknown kinds raise ValueError. ``set`` is a list compared
            unordered.
        options: for multiple choice, letter -> option text.
        tolerance: relative tolerance for numbers, overriding the defaults (ints exact, 1e-4).
        unordered: compare list items as a multiset.
        math_verify: allow the math-verify helper process for symbolic math (True: the shared
            default :class:`~.mathverify.MathVerifier`; or pass your own; False: rules only).
    """
    kind = canonical_kind(kind)
    if prediction is None or not str(prediction).strip():
        return MatchResult(False, kind or "text", "empty")
    prediction = str(prediction)
    reference = str(reference)
    if tolerance is not None and not tolerance >= 0:
        raise ValueError(f"tolerance must be a non-negative number, got {tolerance!r}")
    inferred = kind is None
    if inferred:
        kind = infer_kind(reference, options)
    if kind == "set":
        unordered = True
    elif unordered and kind not in ("list", "choice") and len(_split_list(reference)) >= 2:
        kind = "list"
    if prediction.strip() == reference.strip() and kind not in ("list", "set"):
        return MatchResult(True, kind, "exact")
    if len(prediction) > max(8 * len(reference), MAX_PREDICTION_CHARS):
        return MatchResult(None, kind, "prediction_too_long")  # no rule equates an essay with a short answer
    pred, ref = clean_answer(prediction), clean_answer(reference)
    if not pred:
        return MatchResult(False, kind, "empty")
    raw = (prediction.strip(), reference.strip())
    if kind == "math" or (inferred and kind == "list"):
        res = _match_intervals(pred, ref, tolerance, explicit_math=not inferred)
        if res is not None:
            return res if not inferred else _last_resort(res, raw, "math", math_verify)
    if kind == "numeric":
        return _match_numeric(pred, ref, tolerance, False, math_verify, kind, raw)
    if kind == "choice":
        return _match_choice(pred, ref, options, prediction)
    if kind == "yesno":
        return _match_yesno(pred, ref)
    if kind == "math":
        return _match_math(pred, ref, tolerance, math_verify, raw)
    if kind in ("list", "set"):
        res = _match_list(prediction, reference, unordered, tolerance, math_verify, kind, inferred)
        return _last_resort(res, raw, kind, math_verify) if inferred or kind == "set" else res
    return _match_text(pred, ref)


def answers_match(
    prediction: str | None,
    reference: str,
    *,
    kind: str | None = None,
    options: Mapping[str, str] | None = None,
    tolerance: float | None = None,
    unordered: bool = False,
    math_verify: bool | MathVerifier = True,
) -> bool:
    """True when the rules find the prediction equivalent to the reference.

    Undecided pairs (see :func:`match_answer`) count as no match; use an LLM judge on top for
    free-form answers.
    """
    return match_answer(
        prediction, reference, kind=kind, options=options, tolerance=tolerance,
        unordered=unordered, math_verify=math_verify,
    ).match is True
