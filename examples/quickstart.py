"""Quickstart: a scripted agent plays one episode of the bundled suite and prints the transcript.

    python examples/quickstart.py [--env DeepEyes-Toy-v0] [--seed 0]

The agent writes Python that runs on the image in the sandbox, reads the printed result, and
answers; the env pays the reward at the end.
"""

from __future__ import annotations

import argparse
import re

import gymnasium as gym

import deepeyes_gym  # noqa: F401  (registers the env ids)

COUNT_CODE = """<think>The squares are tiny in a large image; count the {colour} blobs by pixel colour.</think>
<code>
```python
import numpy as np
from scipy import ndimage
a = np.asarray(image_1).astype(int)
target = {rgb}
mask = (np.abs(a - np.array(target)).sum(axis=2) < 60)
labels, n = ndimage.label(mask)
print(n)
```
</code>"""

RGB = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 60, 220)}


def scripted_turn(obs_text: str, question: str) -> str:
    """First turn: run code. Second turn: answer with the number the code printed."""
    found = re.search(r"stdout:\n```\n(\d+)", obs_text)
    if found:
        return f"<think>The code counted {found.group(1)}.</think>\n<answer>{found.group(1)}</answer>"
    colour = next(c for c in RGB if c in question)
    return COUNT_CODE.format(colour=colour, rgb=RGB[colour])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="DeepEyes-Toy-v0")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    env = gym.make(args.env, render_mode="ansi")
    obs, info = env.reset(seed=args.seed)
    question = obs["text"].rsplit("<image>", 1)[-1]
    terminated = truncated = False
    while not (terminated or truncated):
        action = scripted_turn(obs["text"], question)
        obs, reward, terminated, truncated, info = env.step(action)
    print(env.render())
    print(f"\nreward={reward}  accuracy={info['accuracy']}  answer={info['answer']}  truth={info['ground_truth']}")
    env.close()


if __name__ == "__main__":
    main()
