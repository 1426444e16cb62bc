"""The RL math against the shared DAPO spec's hand-checked vectors (and a few more by hand)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from deepeyes_gym.trainers.algorithms import (  # noqa: E402
    ALGORITHMS,
    Algorithm,
    filter_groups,
    get_algorithm,
    group_advantages,
    overlong_penalty,
    policy_loss,
    register_advantage,
    register_algorithm,
    truncated_is_weights,
)

T = torch.tensor


# ---------------------------------------------------------------------- 1. advantages
def test_grpo_advantage_uses_the_unbiased_std():
    adv = group_advantages(T([1.0, -1.0, -1.0, 1.0]), 4, "grpo")
    assert torch.allclose(adv, T([1, -1, -1, 1.0]) / math.sqrt(4 / 3), atol=1e-5)  # ±0.8660
    assert abs(float(adv[0]) - 0.8660) < 1e-4


def test_all_equal_group_and_group_of_one_give_zero():
    assert torch.equal(group_advantages(T([1.0, 1.0, 1.0, 1.0]), 4), torch.zeros(4))
    assert torch.equal(group_advantages(T([1.0, -1.0]), 1), torch.zeros(2))
    assert torch.equal(group_advantages(T([3.0]), 1, "rloo"), torch.zeros(1))


def test_groups_are_contiguous_and_independent():
    adv = group_advantages(T([1.0, 0.0, 5.0, 5.0]), 2, "drgrpo")
    assert torch.equal(adv, T([0.5, -0.5, 0.0, 0.0]))


def test_rloo_is_leave_one_out():
    adv = group_advantages(T([1.0, 0.0, 0.0]), 3, "rloo")  # 1 − 0, 0 − 0.5, 0 − 0.5
    assert torch.allclose(adv, T([1.0, -0.5, -0.5]))


def test_reinforce_pp_whitens_over_the_batch():
    adv = group_advantages(T([1.0, 0.0, 3.0, 1.0]), 2, "reinforce_pp")
    a = T([0.5, -0.5, 1.0, -1.0])
    assert torch.allclose(adv, (a - a.mean()) / (a.std() + 1e-6), atol=1e-6)


def test_bad_group_size_and_unknown_estimator():
    with pytest.raises(ValueError):
        group_advantages(T([1.0, 2.0, 3.0]), 2)
    with pytest.raises(KeyError, match="registered"):
        group_advantages(T([1.0, 2.0]), 2, "nope")


# ---------------------------------------------------------------------- 2. clip-higher, dual-clip
def one_token(ratio: float, adv: float, **kw):
    logp = T([[math.log(ratio)]])
    loss, metrics = policy_loss(logp, torch.zeros(1, 1), T([adv]), torch.ones(1, 1), **kw)
    return float(loss), metrics


def test_clip_higher_bounds():
    loss, m = one_token(1.3, 1.0)  # Â>0: clipped at 1.28
    assert loss == pytest.approx(-1.28) and m["clipfrac"] == 1.0 and m["clipfrac_high"] == 1.0
    loss, m = one_token(0.7, -1.0)  # Â<0: clipped at 0.8
    assert loss == pytest.approx(0.8) and m["clipfrac_low"] == 1.0
    loss, m = one_token(1.1, 1.0)  # inside the band: unclipped
    assert loss == pytest.approx(-1.1) and m["clipfrac"] == 0.0


def test_dual_clip_caps_negative_advantages():
    loss, m = one_token(5.0, -2.0)
    assert loss == pytest.approx(10.0) and m["dual_clipfrac"] == 0.0  # 5·|Â| without dual-clip
    loss, m = one_token(5.0, -2.0, clip_c=3.0)
    assert loss == pytest.approx(6.0) and m["dual_clipfrac"] == 1.0  # 3·|Â|
    loss, _ = one_token(5.0, 2.0, clip_c=3.0)  # positive advantages are not dual-clipped
    assert loss == pytest.approx(-2.56)


def test_approx_kl_is_k3():
    _, m = one_token(2.0, 1.0)
    assert m["approx_kl"] == pytest.approx((2.0 - 1) - math.log(2.0))


# ---------------------------------------------------------------------- 3. aggregation
LOSSES = T([[1.0, 2.0, 0.0], [3.0, 4.0, 5.0], [7.0, 0.0, 0.0]])
MASK = T([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


def agg(rows, mode, **kw):
    # With ratio 1 and advantage −1, each token's loss is exactly its entry of LOSSES... scaled:
    # use logp = old_logp = 0 and Â = −ℓ per token, so −Â·r = ℓ.
    losses, mask = LOSSES[rows], MASK[rows]
    zeros = torch.zeros_like(losses)
    return float(policy_loss(zeros, zeros, -losses, mask, agg=mode, **kw)[0])


def test_token_mean_is_global_and_split_invariant():
    assert agg([0, 1, 2], "token-mean") == pytest.approx(22 / 6)
    split = agg([0, 1], "token-mean", global_tokens=6) + agg([2], "token-mean", global_tokens=6)
    assert split == pytest.approx(22 / 6)
    naive = (agg([0, 1], "token-mean") + agg([2], "token-mean")) / 2  # per-micro-batch means
    assert naive == pytest.approx(5.0) and naive != pytest.approx(22 / 6)


def test_seq_mean_modes():
    assert agg([0, 1, 2], "seq-mean-token-mean") == pytest.approx((1.5 + 4 + 7) / 3)
    assert agg([0, 1, 2], "seq-mean-token-sum") == pytest.approx((3 + 12 + 7) / 3)
    split = agg([0, 1], "seq-mean-token-mean", global_seqs=3) + agg([2], "seq-mean-token-mean", global_seqs=3)
    assert split == pytest.approx((1.5 + 4 + 7) / 3)
    with pytest.raises(ValueError):
        agg([0], "sum-of-nothing")


def test_masked_tokens_carry_no_gradient():
    logp = torch.zeros(1, 3, requires_grad=True)
    loss, _ = policy_loss(logp, torch.zeros(1, 3), T([1.0]), T([[1.0, 0.0, 1.0]]))
    loss.backward()
    assert logp.grad[0, 1] == 0 and logp.grad[0, 0] != 0


# ---------------------------------------------------------------------- 4. dynamic sampling filter
def test_filter_groups_keeps_groups_with_spread():
    keep = filter_groups(T([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.5, 0.5]), 2)
    assert keep.tolist() == [False, True, False, False]


# ---------------------------------------------------------------------- 5. overlong shaping
def test_overlong_penalty_spec_vector():
    pen = overlong_penalty(T([16384, 18432, 20480, 30000, 100]), 20480, 4096)
    assert pen.tolist() == [0.0, -0.5, -1.0, -1.0, 0.0]
    assert overlong_penalty(T([18432]), 20480, 4096, factor=0.5).item() == -0.25
    with pytest.raises(ValueError):
        overlong_penalty(T([1]), 10, 0)


# ---------------------------------------------------------------------- IS correction, registry
def test_truncated_is_weights():
    w = truncated_is_weights(T([0.0, math.log(3.0), math.log(0.5)]), torch.zeros(3), cap=2.0)
    assert torch.allclose(w, T([1.0, 2.0, 0.5]))


def test_registered_algorithms_and_a_users_own():
    assert {"dapo", "grpo", "drgrpo", "ppo", "rloo", "reinforce_pp"} <= set(ALGORITHMS)
    dapo = get_algorithm("dapo")
    assert (dapo.clip_low, dapo.clip_high, dapo.loss_agg, dapo.dynamic_sampling, dapo.overlong_shaping) == (
        0.2, 0.28, "token-mean", True, True)

    @register_advantage("test_rank")
    def rank(r, eps):
        return r.argsort(dim=1).argsort(dim=1).float() - (r.shape[1] - 1) / 2

    register_algorithm(Algorithm("test_mine", advantage="test_rank"))
    assert group_advantages(T([3.0, 1.0, 2.0]), 3, get_algorithm("test_mine").advantage).tolist() == [1.0, -1.0, 0.0]
    with pytest.raises(KeyError):
        register_algorithm(Algorithm("bad", advantage="missing"))
    with pytest.raises(KeyError):
        get_algorithm("missing")


def test_the_custom_algorithm_example_registers_through_a_plugin_path():
    from pathlib import Path

    from deepeyes_gym.trainers.rl_steps import import_plugin

    import_plugin(str(Path(__file__).parent.parent / "examples" / "custom_algorithm.py"))
    algo = get_algorithm("rank_grpo")
    assert algo.advantage == "rank" and not algo.dynamic_sampling
    adv = group_advantages(T([1.0, -1.0, 0.5, 0.5]), 4, "rank")
    assert adv.tolist() == [1.0, -1.0, 0.0, 0.0]
