"""Tiny random-weight models built on the spot, for smoke runs, tests and benchmarks (no hub downloads).

``model_dir("tiny")`` (what configs mean by ``model: tiny``) is the Qwen2.5-VL one; any other
value is taken as a model directory.

* :func:`tiny_tokenizer_dir` - a ByteLevel BPE trained here on DeepEyesV2-style text, with the
  Qwen special tokens appended after the learned vocabulary (as in Qwen's own tokenizer) and
  ``<tool_call>``/``</tool_call>`` as added non-special tokens (also as in Qwen).
* :func:`tiny_qwen25vl_dir` - ``Qwen2_5_VLForConditionalGeneration`` with a tiny vision tower,
  config.json in the flat hub layout (what 4.x and 5.x both read), loaded back through the real
  ``from_pretrained`` before it is published.
* :func:`tiny_qwen2_dir` - a text-only ``Qwen2ForCausalLM`` with head_dim 64 (what vLLM's CPU
  attention accepts).

Each directory is keyed by a hash of this file and the library versions, built once under
``$DEEPEYES_GYM_TINY_MODELS`` (default: ``<tmp>/deepeyes-gym-tiny-models``) behind a file lock and
published by an atomic rename, so parallel sessions and reruns share it. Weights are seeded.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

__all__ = [
    "model_dir", "SPECIAL_TOKENS", "ADDED_TOKENS", "QWEN2_VL_CHAT_TEMPLATE", "tiny_tokenizer_dir",
    "tiny_qwen25vl_dir", "tiny_qwen2_dir", "cache_root", "build_times", "train_tokenizer", "build_qwen25vl",
    "qwen25vl_config", "mrope_section",
]

SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
ADDED_TOKENS = ("<tool_call>", "</tool_call>")  # non-special added tokens, as in Qwen2.5
VOCAB_SIZE = 1200  # learned BPE vocabulary (bytes + merges), before the added tokens

# Qwen2-VL / Qwen2.5-VL's chat template (the hub's), so tests can compare against it.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2's pre-tokenizer split (digits one by one, punctuation runs glued to a following newline:
# so ">\n" can be one token and a stop string can end inside a token, as with the real model).
_QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

build_times: dict[str, float] = {}
"""Seconds spent building each artefact in this process (empty when the cache was warm)."""


def cache_root() -> Path:
    return Path(os.environ.get("DEEPEYES_GYM_TINY_MODELS") or Path(tempfile.gettempdir()) / "deepeyes-gym-tiny-models")


def _key(name: str) -> str:
    import tokenizers
    import torch
    import transformers

    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(f"{name}|{transformers.__version__}|{tokenizers.__version__}|{torch.__version__}".encode())
    return f"{name}-{h.hexdigest()[:16]}"


def _cached(name: str, build: Callable[[Path], None]) -> Path:
    """Build ``name`` once into the cache (file lock + atomic rename) and return its directory."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    final = root / _key(name)
    if (final / "DONE").exists():
        return final
    with open(root / f"{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "DONE").exists():
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            t0 = time.perf_counter()
            build(tmp)
            build_times[name] = time.perf_counter() - t0
            (tmp / "DONE").write_text("ok\n")
            tmp.chmod(0o755)  # mkdtemp's 0700 would hide it from other users of a shared cache
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


# ----------------------------------------------------------------------------- tokenizer

_WORDS = (
    "the image shows a chart with bars and a red circle in the corner what is value of largest "
    "number here answer question crop zoom rotate region text color count people car sign table "
    "search result found title link snippet python code print size width height output error "
    "Let me look at top left right bottom first then compute sum mean total year price city name"
).split()


def _corpus(n: int = 1500, seed: int = 0) -> list[str]:
    """DeepEyesV2-style turns: the markup, code, observations and search results."""
    rng = random.Random(seed)

    def words(k: int) -> str:
        return " ".join(rng.choice(_WORDS) for _ in range(k))

    lines = []
    for i in range(n):
        x, y, w, h = (rng.randint(0, 2000) for _ in range(4))
        lines += [
            f"<think>{words(rng.randint(3, 12))}.</think>\n<code>\n```python\n"
            f"crop = image_1.crop(({x}, {y}, {x + w}, {y + h}))\nprint(crop.size)\nplt.imshow(crop)\n"
            f"plt.show()\n```\n</code>",
            f"Code execution result:\nstdout:\n```\n({w}, {h})\n```\n\nstderr:\n```\n\n```\n\nImages:\n<image><image>",
            f'<think>{words(5)}</think>\n<tool_call>{{"name": "search", "arguments": {{"query": "{words(3)}"}}}}</tool_call>',
            f"<tool_response>\nA Google search for '{words(2)}' found 5 results:\n\n## Web Results\n"
            f"1. [{words(3)}](https://example.com/{i})\n{words(10)}\n</tool_response>\n",
            f"<think>{words(6)}</think><answer>{rng.choice([str(x), words(1), 'A', 'B'])}</answer>",
            f"{words(12)}? Answer with a number {i} or {x / 7:.3f}.",
            f"system\nYou are a helpful assistant.\nuser\n{words(4)}\nassistant\n<think>{words(2)}",
        ]
    return lines


def train_tokenizer(out: Path, corpus: Iterable[str], *, vocab_size: int = VOCAB_SIZE, split: str = _QWEN_SPLIT,
                    chat_template: str = QWEN2_VL_CHAT_TEMPLATE) -> Path:
    """Train a Qwen-style ByteLevel BPE on ``corpus`` into ``out`` (tokenizer.json + tokenizer_config.json).

    ``split`` is the pre-tokenizer's regex (Qwen2's by default; an experiment may split finer).
    The special tokens follow the learned vocabulary, as in Qwen (special ids at the end of the range).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.add_tokens(list(ADDED_TOKENS))
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        # What 4.x and 5.x both load as the same fast tokenizer (see cpu-stack.md).
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "model_max_length": 32768,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "chat_template": chat_template,
    }, indent=2))
    return out


def _build_tokenizer(out: Path) -> None:
    train_tokenizer(out, _corpus())


def tiny_tokenizer_dir() -> Path:
    """Directory with tokenizer.json + tokenizer_config.json (loadable by ``AutoTokenizer``)."""
    return _cached("tokenizer", _build_tokenizer)


def _copy_tokenizer(out: Path, src: Path) -> tuple[int, dict[str, int]]:
    """Copy the tokenizer files into a model dir; returns the model's padded vocabulary size and
    the added tokens' ids."""
    out.mkdir(parents=True, exist_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if Path(src) != out:
            shutil.copy(Path(src) / f, out / f)
    tok = json.loads((out / "tokenizer.json").read_text())
    n = len(tok["model"]["vocab"]) + len(SPECIAL_TOKENS) + len(ADDED_TOKENS)
    # Padded past the tokenizer like Qwen's 151936 vs 151665, so unused rows exist in tests too.
    return (n + 63) // 64 * 64, {t["content"]: t["id"] for t in tok["added_tokens"]}


def _generation_config(ids: dict[str, int]) -> dict:
    # Qwen2.5-VL-Instruct's shipped defaults: a policy must override every one of them.
    return {
        "bos_token_id": ids["<|endoftext|>"], "pad_token_id": ids["<|endoftext|>"],
        "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]], "do_sample": True,
        "repetition_penalty": 1.05, "temperature": 0.1, "top_p": 0.001, "top_k": 1,
    }


def _check_roundtrip(cls, out: Path, model, inputs: dict) -> None:
    """Load ``out`` back through ``from_pretrained`` and demand bit-equal logits."""
    import torch

    loaded = cls.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        a = model(**inputs).logits
        b = loaded(**inputs).logits
    if not torch.equal(a, b):
        raise RuntimeError(f"{out}: reloaded model differs (max |d| {float((a - b).abs().max()):.3g})")


# ----------------------------------------------------------------------------- Qwen2.5-VL

def mrope_section(head_dim: int) -> list[int]:
    """Qwen2.5-VL's split of the rotary half-dimension into (time, height, width): [16, 24, 24] at
    head_dim 128, [4, 6, 6] at 32."""
    half = head_dim // 2
    t = half // 4
    return [t, (half - t) // 2, half - t - (half - t) // 2]


def qwen25vl_config(vocab_size: int, ids: dict[str, int], *, hidden: int = 64, layers: int = 2, heads: int = 2,
                    kv_heads: int = 1, rope_theta: float = 1000000.0, vision_depth: int = 2) -> dict:
    """config.json in the flat hub layout (4.x drops ``mrope_section`` from the nested 5.x one)."""
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "vocab_size": vocab_size,
        "hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "hidden_act": "silu",
        "max_position_embeddings": 4096, "max_window_layers": layers, "rms_norm_eps": 1e-6,
        "rope_theta": rope_theta, "sliding_window": 4096, "use_sliding_window": False,
        "attention_dropout": 0.0, "initializer_range": 0.02, "tie_word_embeddings": False,
        "use_cache": True, "torch_dtype": "float32",
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"], "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "rope_scaling": {"type": "mrope", "mrope_section": mrope_section(hidden // heads)},
        "vision_config": {
            "depth": vision_depth, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
            "hidden_act": "silu", "in_chans": 3, "in_channels": 3, "out_hidden_size": hidden,
            "patch_size": 14, "spatial_patch_size": 14, "spatial_merge_size": 2,
            "temporal_patch_size": 2, "window_size": 56, "fullatt_block_indexes": [vision_depth - 1],
            "tokens_per_second": 2, "initializer_range": 0.02,
        },
    }


PREPROCESSOR_CONFIG = {
    "image_processor_type": "Qwen2VLImageProcessor",
    "do_resize": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True,
    "rescale_factor": 1 / 255,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "min_pixels": 56 * 56, "max_pixels": 28 * 28 * 64,  # small: keeps tests fast
    "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2, "resample": 3,
}


def build_qwen25vl(out: Path, tokenizer_dir: Path, *, seed: int = 0, min_pixels: int | None = None,
                   max_pixels: int | None = None, generation: dict | None = None, **arch: Any) -> Path:
    """Write a random-weight ``Qwen2_5_VLForConditionalGeneration`` (seeded) with the tokenizer in
    ``tokenizer_dir`` into ``out`` and check it loads back bit-equal through ``from_pretrained``.

    ``arch``: :func:`qwen25vl_config`'s sizes (hidden, layers, heads, kv_heads, rope_theta,
    vision_depth). ``generation``: generation_config.json (default: Qwen2.5-VL-Instruct's shipped
    sampling defaults, which a policy must override).
    """
    import inspect

    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    vocab, ids = _copy_tokenizer(out, tokenizer_dir)
    flat = qwen25vl_config(vocab, ids, **arch)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**flat)).eval()
    model.save_pretrained(out, safe_serialization=True)
    (out / "config.json").write_text(json.dumps(flat, indent=2))  # overwrite: the hub layout
    (out / "generation_config.json").write_text(json.dumps(generation or _generation_config(ids), indent=2))
    pre = dict(PREPROCESSOR_CONFIG)
    pre.update({k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None})
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    # An image of 2x2 merged patches inside text, so the round trip exercises vision + 3-D rope.
    pad = ids["<|image_pad|>"]
    input_ids = torch.tensor([[5, 6, ids["<|vision_start|>"], pad, pad, pad, pad, ids["<|vision_end|>"], 7, 8]])
    inputs = {
        "input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
        "pixel_values": torch.randn(16, 3 * 2 * 14 * 14), "image_grid_thw": torch.tensor([[1, 4, 4]]),
    }
    if "mm_token_type_ids" in inspect.signature(model.forward).parameters:
        inputs["mm_token_type_ids"] = (input_ids == pad).int()
    _check_roundtrip(Qwen2_5_VLForConditionalGeneration, out, model, inputs)
    return out


def _build_qwen25vl(out: Path) -> None:
    build_qwen25vl(out, tiny_tokenizer_dir())


def tiny_qwen25vl_dir() -> Path:
    """A random-weight Qwen2.5-VL (2 text layers of width 64, 2 vision blocks of width 32)."""
    return _cached("qwen25vl", _build_qwen25vl)


# ----------------------------------------------------------------------------- Qwen2 (text)

def _build_qwen2(out: Path) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    vocab, ids = _copy_tokenizer(out, tiny_tokenizer_dir())
    cfg = Qwen2Config(
        vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False,
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).eval()
    model.save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").write_text(json.dumps(_generation_config(ids), indent=2))
    input_ids = torch.tensor([[5, 6, 7, 8, 9]])
    _check_roundtrip(Qwen2ForCausalLM, out, model, {"input_ids": input_ids})


def tiny_qwen2_dir() -> Path:
    """A random-weight text-only Qwen2 (width 128, 2 heads of 64: vLLM CPU's attention needs 64+)."""
    return _cached("qwen2", _build_qwen2)


def model_dir(spec: str | Path) -> Path:
    """A model directory: ``"tiny"`` builds (or finds) the random-weight Qwen2.5-VL, ``"tiny-text"``
    the text-only Qwen2; anything else is a path."""
    if str(spec) == "tiny":
        return tiny_qwen25vl_dir()
    if str(spec) == "tiny-text":
        return tiny_qwen2_dir()
    return Path(spec)


if __name__ == "__main__":  # python -m deepeyes_gym.agents.tiny: build (or find) all three and time it
    t0 = time.perf_counter()
    for fn in (tiny_tokenizer_dir, tiny_qwen25vl_dir, tiny_qwen2_dir):
        print(fn.__name__, fn())
    print(f"total {time.perf_counter() - t0:.2f}s; built: {build_times}")
