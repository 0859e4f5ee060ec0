"""Losses and advantages: parity with TRL's GRPOTrainer loss code (called, not re-derived), hand-computed cases."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from grpo_audio.advantages import group_advantages
from grpo_audio.loss import LossConfig, importance_weights, policy_loss


def trl_loss(
    logps,
    old,
    adv,
    mask,
    loss_type,
    beta=0.0,
    ref=None,
    eps=0.2,
    eps_high=0.28,
    level="token",
    is_ratio=None,
    max_len=16,
):
    """Run TRL's own GRPOTrainer._compute_loss on given tensors (the model's logprobs are stubbed in)."""
    from trl import GRPOTrainer

    n, t = logps.shape
    stub = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
        aux_loss_enabled=False,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level=level,
        beta=beta,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        loss_type=loss_type,
        epsilon_low=eps,
        epsilon_high=eps_high,
        use_vllm=is_ratio is not None,
        vllm_importance_sampling_correction=True,
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        max_completion_length=max_len,
        accelerator=SimpleNamespace(
            num_processes=1, gather=lambda x: x, reduce=lambda x, reduction="sum": x, gather_for_metrics=lambda x: x
        ),
        _entropy_bonus_enabled=False,
        _metrics=defaultdict(lambda: defaultdict(list)),
    )
    inputs = {
        "prompt_ids": torch.zeros(n, 1, dtype=torch.long),
        "prompt_mask": torch.ones(n, 1, dtype=torch.long),
        "completion_ids": torch.zeros(n, t, dtype=torch.long),
        "completion_mask": mask,
        "advantages": adv,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum(),
        "importance_sampling_ratio": is_ratio,
    }
    return GRPOTrainer._compute_loss(stub, None, inputs)


def random_batch(seed, n=16, t=9):
    g = torch.Generator().manual_seed(seed)
    logps = -torch.rand(n, t, generator=g, dtype=torch.float64) * 3
    old = logps + 0.3 * torch.randn(n, t, generator=g, dtype=torch.float64)  # ratios beyond both clip ranges
    ref = logps + 0.2 * torch.randn(n, t, generator=g, dtype=torch.float64)
    sampling = old + 0.2 * torch.randn(n, t, generator=g, dtype=torch.float64)
    adv = torch.randn(n, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, t + 1, (n,), generator=g)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
    return logps, old, ref, sampling, adv, mask


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("seed", [0, 1])
def test_parity_with_trl(loss_type, beta, seed):
    logps, old, ref, _, adv, mask = random_batch(seed)
    cfg = LossConfig(
        loss_type=loss_type, epsilon=0.2, epsilon_high=0.28, beta=beta, max_completion_length=16, is_mode="none"
    )
    ours, stats = policy_loss(logps, old, adv, mask, cfg, ref_logps=ref)
    theirs = trl_loss(logps, old, adv, mask, loss_type, beta=beta, ref=ref)
    assert abs(ours.item() - theirs.item()) < 1e-6
    assert stats.clip_ratio_low > 0 and stats.clip_ratio_high > 0  # the batch exercises both clip ranges


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_gspo_parity_with_trl_sequence_level(beta):
    logps, old, ref, _, adv, mask = random_batch(3)
    cfg = LossConfig(loss_type="gspo", epsilon=3e-4, epsilon_high=4e-4, beta=beta, is_mode="none")
    ours, _ = policy_loss(logps, old, adv, mask, cfg, ref_logps=ref)
    theirs = trl_loss(logps, old, adv, mask, "grpo", beta=beta, ref=ref, eps=3e-4, eps_high=4e-4, level="sequence")
    assert abs(ours.item() - theirs.item()) < 1e-6


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_is_correction_parity_with_trl(loss_type):
    logps, old, _, sampling, adv, mask = random_batch(4)
    cfg = LossConfig(loss_type=loss_type, epsilon_high=0.28, is_mode="token_truncate", is_cap=1.1)
    ours, stats = policy_loss(logps, old, adv, mask, cfg, sampling_logps=sampling)
    ratio, _ = importance_weights(old, sampling, mask, cfg)
    theirs = trl_loss(logps, old, adv, mask, loss_type, is_ratio=ratio)
    assert abs(ours.item() - theirs.item()) < 1e-6 and stats.is_ratio_max > 1.1


def test_gradients_flow_through_logps_only():
    logps, old, ref, sampling, adv, mask = random_batch(5)
    logps = logps.clone().requires_grad_(True)
    loss, _ = policy_loss(logps, old, adv, mask, LossConfig(beta=0.1), ref_logps=ref, sampling_logps=sampling)
    loss.backward()
    assert logps.grad is not None and (logps.grad[mask == 0] == 0).all() and logps.grad.abs().sum() > 0


def one(x):
    return torch.tensor([[x]], dtype=torch.float64)


def test_hand_computed_clipping():
    m = torch.ones(1, 1)
    cfg = LossConfig(loss_type="grpo", epsilon=0.2, epsilon_high=0.28, is_mode="none")
    # ratio 1.5, A = +1: clipped at 1.28 -> loss -1.28 ("high" clip)
    loss, s = policy_loss(one(math.log(1.5)), one(0.0), torch.tensor([1.0], dtype=torch.float64), m, cfg)
    assert loss.item() == pytest.approx(-1.28) and s.clip_ratio_high == 1.0 and s.clip_ratio_low == 0.0
    # ratio 0.5, A = -2: min(0.5 * -2, 0.8 * -2) = -1.6 -> loss 1.6 ("low" clip)
    loss, s = policy_loss(one(math.log(0.5)), one(0.0), torch.tensor([-2.0], dtype=torch.float64), m, cfg)
    assert loss.item() == pytest.approx(1.6) and s.clip_ratio_low == 1.0
    # ratio 0.5, A = +1: unclipped side is smaller: min(0.5, 0.8) = 0.5 -> loss -0.5, no clip counted
    loss, s = policy_loss(one(math.log(0.5)), one(0.0), torch.tensor([1.0], dtype=torch.float64), m, cfg)
    assert loss.item() == pytest.approx(-0.5) and s.clip_ratio_region == 0.0


def test_hand_computed_kl_k3():
    m = torch.ones(1, 1)
    cfg = LossConfig(loss_type="grpo", beta=0.5, is_mode="none")
    # logp = -1, ref = -2: delta = -1, k3 = e^-1 + 1 - 1 = 0.36788; A = 0 so loss = beta * k3
    loss, s = policy_loss(one(-1.0), one(-1.0), torch.tensor([0.0], dtype=torch.float64), m, cfg, ref_logps=one(-2.0))
    assert s.kl == pytest.approx(math.exp(-1)) and loss.item() == pytest.approx(0.5 * math.exp(-1))


def test_hand_computed_is_truncation_and_mask():
    m = torch.ones(1, 3)
    old = torch.tensor([[-1.0, -1.0, -1.0]], dtype=torch.float64)
    sampling = torch.tensor([[-1.0, -1.0 - math.log(3.0), -1.0 + math.log(2.0)]], dtype=torch.float64)
    # token ratios exp(old - sampling) = 1, 3, 0.5
    trunc, raw = importance_weights(old, sampling, m, LossConfig(is_mode="token_truncate", is_cap=2.0))
    assert raw.tolist()[0] == pytest.approx([1.0, 3.0, 0.5]) and trunc.tolist()[0] == pytest.approx([1.0, 2.0, 0.5])
    masked, _ = importance_weights(old, sampling, m, LossConfig(is_mode="token_mask", is_cap=2.0, is_min=0.6))
    assert masked.tolist()[0] == pytest.approx([1.0, 0.0, 0.0])
    seq, _ = importance_weights(old, sampling, m, LossConfig(is_mode="sequence_truncate", is_cap=2.0))
    assert seq.shape == (1, 1) and seq.item() == pytest.approx(1.5)  # exp(log 3 - log 2) = 1.5, under the cap
    # with ratio 1 between policy and old, A = 1, token mode: loss = -(1 + 2 + 0.5) / 3
    loss, s = policy_loss(
        old,
        old,
        torch.tensor([1.0], dtype=torch.float64),
        m,
        LossConfig(loss_type="grpo", is_mode="token_truncate", is_cap=2.0),
        sampling_logps=sampling,
    )
    assert loss.item() == pytest.approx(-3.5 / 3) and s.is_ratio_max == pytest.approx(3.0)


def test_advantages_hand_computed():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    adv, zero, stats = group_advantages(r, 4, "group")
    std = torch.tensor([1.0, 0, 0, 0]).std().item()  # 0.5 (unbiased)
    assert adv[:4].tolist() == pytest.approx([0.75 / (std + 1e-4), -0.25 / (std + 1e-4)] + [-0.25 / (std + 1e-4)] * 2)
    assert adv[4:].abs().max() == 0 and zero.tolist() == [False, True] and stats.frac_zero_std_groups == 0.5
    none, _, _ = group_advantages(r, 4, "none")
    assert none[:4].tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25])
    batch, _, _ = group_advantages(r, 4, "batch")
    assert batch[0].item() == pytest.approx(0.75 / (r.std().item() + 1e-4))
    floored, _, _ = group_advantages(torch.tensor([0.0, 0.001]), 2, "group", std_floor=0.5)
    assert floored.abs().max().item() < 0.002  # a hair of difference does not become +-0.7
    with pytest.raises(ValueError, match="do not split"):
        group_advantages(torch.zeros(5), 2)
    # negative advantages scaled, positive ones and the zero-variance group untouched
    half, _, half_stats = group_advantages(r, 4, "none", negative_weight=0.5)
    assert half.tolist() == pytest.approx([0.75, -0.125, -0.125, -0.125, 0, 0, 0, 0])
    assert half_stats.advantage_mean == pytest.approx((0.75 - 0.375) / 8)
    positive_only, _, _ = group_advantages(r, 4, "group", negative_weight=0.0)
    assert positive_only.tolist() == pytest.approx([0.75 / (std + 1e-4)] + [0.0] * 7)
    with pytest.raises(ValueError, match="negative_weight"):
        group_advantages(r, 4, negative_weight=-1.0)


def test_trainer_advantages_read_the_grpo_settings():
    """The trainer's advantage stage passes scale_rewards and negative_weight from its config."""
    from grpo_audio.config import GRPOConfig
    from grpo_audio.trainer import GRPOTrainer

    grpo = GRPOConfig(scale_rewards="none", negative_weight=0.5)
    trainer = SimpleNamespace(
        cfg=SimpleNamespace(grpo=grpo),
        process=SimpleNamespace(device="cpu", rank=0),
        parallel=SimpleNamespace(gather=lambda t: t),
    )
    batch = SimpleNamespace(rewards=SimpleNamespace(total=[1.0, 0.0, 0.0, 0.0]), group_size=4)
    GRPOTrainer.compute_advantages(trainer, batch)
    assert batch.advantages.tolist() == pytest.approx([0.75, -0.125, -0.125, -0.125])
