"""Training examples: token ids, a loss mask and images, built from episode records.

An SFT example is rendered with the same renderer and the same deltas the rollout engine uses, so
cold-start SFT and RL see byte-identical templates: the prompt (system, question, generation
prompt, ``<think>`` prefill) and every tool observation are masked out; the policy's own turn text
is trained on, and the final answer turn also learns its end-of-turn token. A turn that stopped on
``</code>`` or ``</tool_call>`` does not (generation stops there, as in RL).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ..envs.episode import Episode, Turn
from ..envs.episode_io import EpisodeStore
from ..envs.turns import THINK_PREFILL, EnvDelta, Message
from ..agents.render.base import concat_mm_inputs

__all__ = ["Example", "episode_to_example", "load_episodes", "sft_trajectory_to_episode"]

log = logging.getLogger(__name__)


@dataclass
class Example:
    """One training sequence: ``ids`` [T], ``mask`` [T] (1 where the loss applies), the images in
    token order and their processed tensors."""

    ids: list[int]
    mask: list[int]
    images: list[Any]
    mm_inputs: dict[str, torch.Tensor]
    source: str = ""

    @property
    def n_loss_tokens(self) -> int:
        return int(sum(self.mask))


def episode_to_example(episode: Episode, renderer: Any, *, max_length: int | None = None, source: str = "") -> Example:
    """Render an episode turn by turn (prompt and observations mask 0, the policy's turns mask 1)."""
    if episode.prompt is None:
        raise ValueError("an episode without its prompt cannot be rendered")
    pixels = 0
    first = renderer.render_initial(EnvDelta((Message("system", episode.system_prompt), episode.prompt), THINK_PREFILL))
    ids, mask, parts = list(first.ids), [0] * len(first.ids), [first]
    pixels += first.pixels
    for i, turn in enumerate(episode.turns):
        text = turn.action[len(THINK_PREFILL):] if turn.action.startswith(THINK_PREFILL) else turn.action
        own = renderer.encode_text(text)
        ended_turn = turn.observation is None and i == len(episode.turns) - 1 and turn.kind == "answer"
        if ended_turn:
            own = own + [renderer.eos_token_id]  # the model learns to end its final turn
        ids += own
        mask += [1] * len(own)
        if turn.observation is not None:
            obs = renderer.render_delta(EnvDelta((Message("user", turn.observation, turn.observation_images),),
                                                 THINK_PREFILL), after_eos=False, pixels_used=pixels)
            ids += obs.ids
            mask += [0] * len(obs.ids)
            parts.append(obs)
            pixels += obs.pixels
    if max_length is not None and len(ids) > max_length:
        raise ValueError(f"example of {len(ids)} tokens is longer than max_length={max_length}")
    images = [im for p in parts for im in p.images]
    mm = concat_mm_inputs([p.mm_inputs for p in parts if p.images])
    renderer.check_image_tokens(ids, mm.get("image_grid_thw"))  # a mismatch is a bug: raise
    return Example(ids, mask, images, mm, source)


def sft_trajectory_to_episode(traj: Any) -> Episode:
    """A DeepEyesV2 cold-start trajectory (``load_deepeyesv2_sft``) as an episode record."""
    from ..envs.actions import parse_action
    from ..envs.task import load_image

    def arrays(refs: Sequence[Any]) -> tuple[np.ndarray, ...]:
        out = []
        for ref in refs:
            a = np.asarray(load_image(ref).convert("RGB"), dtype=np.uint8)
            a.setflags(write=False)
            out.append(a)
        return tuple(out)

    msgs = list(traj.messages)
    system = next((m["content"] for m in msgs if m["kind"] == "system"), "")
    question = next(m for m in msgs if m["kind"] == "question")
    ep = Episode(task=traj.task, system_prompt=system,
                 prompt=Message("user", question["content"], arrays(question["images"])))
    for m in msgs:
        if m["kind"] == "assistant":
            ep.turns.append(Turn(action=m["content"], kind=parse_action(m["content"]).kind))
        elif m["kind"] == "observation" and ep.turns:
            ep.turns[-1].observation = m["content"]
            ep.turns[-1].observation_images = arrays(m["images"])
    ep.stop_reason = "answer" if ep.turns and ep.turns[-1].kind == "answer" else None
    ep.terminated = ep.stop_reason == "answer"
    return ep


def load_episodes(paths: Iterable[str | Path], *, only_correct: bool = True) -> list[tuple[str, Episode]]:
    """Episodes from EpisodeStore folders (an eval run's ``episodes/`` or the run folder itself)
    and DeepEyesV2 SFT JSON files. ``only_correct`` keeps episodes whose accuracy is 1 (stored
    runs) — curated SFT files are taken as they are."""
    out: list[tuple[str, Episode]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            from ..envs.suites.loaders.deepeyesv2 import load_sft_trajectories

            for traj in load_sft_trajectories(path):
                out.append((str(path), sft_trajectory_to_episode(traj)))
            continue
        store_dir = path / "episodes" if (path / "episodes" / "episodes.jsonl").exists() else path
        if not (store_dir / "episodes.jsonl").exists():
            raise FileNotFoundError(f"{path}: neither an episode store (episodes.jsonl) nor a DeepEyesV2 SFT file")
        latest: dict[Any, Episode] = {}
        for key, ep, _ in EpisodeStore(store_dir):
            latest[key if key is not None else id(ep)] = ep
        kept = [ep for ep in latest.values()
                if not only_correct or float(ep.reward_breakdown.get("accuracy", 0.0)) >= 1.0]
        log.info("%s: %d of %d episodes kept", store_dir, len(kept), len(latest))
        out += [(str(store_dir), ep) for ep in kept]
    return out

