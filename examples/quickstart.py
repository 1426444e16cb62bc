"""Quickstart: a scripted agent plays one episode of the bundled suite and prints the transcript.

    python examples/quickstart.py [--env DeepEyes-RealX-v0] [--seed 0]

The agent writes Python that runs on the image in the sandbox, calls text and image search, reads
what the tools returned, and answers; the env pays the reward at the end of the episode.
"""

from __future__ import annotations

import argparse

import gymnasium as gym

import deepeyes_gym  # noqa: F401  (registers the env ids)
from deepeyes_gym.agents.scripted import ScriptedAgent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="DeepEyes-RealX-v0")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    env = gym.make(args.env, render_mode="ansi")
    agent = ScriptedAgent()
    obs, info = env.reset(seed=args.seed)
    terminated = truncated = False
    while not (terminated or truncated):
        action = agent.act(env.unwrapped.messages(), info)
        obs, reward, terminated, truncated, step_info = env.step(action)
    print(env.render())
    print(
        f"\ntask={info['task_id']} capabilities={info['capabilities']} tools={env.unwrapped.episode.tools_used}"
        f"\nreward={reward} accuracy={step_info['accuracy']} answer={step_info['answer']!r} "
        f"truth={step_info['ground_truth']!r}"
    )
    env.close()


if __name__ == "__main__":
    main()
