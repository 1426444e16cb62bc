"""Plug your own RL algorithm into the trainer: a new advantage estimator + loss settings.

Here: "rank-GRPO", whose advantage is the centred rank of each sample's reward in its group (robust
to reward scale), trained with the DAPO loss settings but no dynamic sampling. Register it once,
then any config can say ``algorithm: rank_grpo``:

    python examples/custom_algorithm.py                      # shows the advantages on a toy group
    deepeyes-gym train rl --config examples/configs/rl_cpu.yaml \
        --set 'plugins=[examples/custom_algorithm.py]' --set algorithm=rank_grpo
"""

from __future__ import annotations

import torch

from deepeyes_gym.trainers.algorithms import Algorithm, group_advantages, register_advantage, register_algorithm


@register_advantage("rank")
def rank_advantage(rewards: torch.Tensor, eps: float) -> torch.Tensor:
    """Â_i = (rank_i − (G−1)/2) / ((G−1)/2): the centred rank in the group, in [−1, 1].
    Ties share the mean rank; an all-equal group gets 0 everywhere."""
    g = rewards.shape[1]
    if g < 2:
        return torch.zeros_like(rewards)
    ranks = (rewards[:, :, None] > rewards[:, None, :]).sum(-1).float()
    ties = (rewards[:, :, None] == rewards[:, None, :]).sum(-1).float() - 1
    centred = ranks + ties / 2 - (g - 1) / 2
    return centred / ((g - 1) / 2)


RANK_GRPO = register_algorithm(Algorithm(
    name="rank_grpo", advantage="rank", clip_low=0.2, clip_high=0.28, loss_agg="token-mean",
    dynamic_sampling=False, overlong_shaping=True,
))


def main() -> None:
    rewards = torch.tensor([1.0, -1.0, 0.5, 0.5, 3.0, 3.0, 3.0, 3.0])
    print("rewards        ", rewards.tolist())
    print("grpo advantages", [round(x, 3) for x in group_advantages(rewards, 4, "grpo").tolist()])
    print("rank advantages", [round(x, 3) for x in group_advantages(rewards, 4, "rank").tolist()])
    # Training with it is one argument:
    #   from deepeyes_gym.trainers.rl import RLConfig, train_rl
    #   train_rl(RLConfig(model="path/to/model", algorithm="rank_grpo", ...))


if __name__ == "__main__":
    main()
