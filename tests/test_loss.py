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
    sapo_temperatures=(1.0, 1.05),
):
    """Run TRL's own GRPOTrainer._compute_loss on given tensors (the model's logprobs are stubbed in)."""
    from trl import GRPOTrainer

    stub = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
        aux_loss_enabled=False,
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level=level,
        beta=beta,
        args=SimpleNamespace(
            use_bias_correction_kl=False,
            delta=None,
            steps_per_generation=1,
            sapo_temperature_pos=sapo_temperatures[0],
            sapo_temperature_neg=sapo_temperatures[1],
        ),
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
    inputs = trl_inputs(old, adv, mask, ref, num_items_in_batch=mask.sum(), importance_sampling_ratio=is_ratio)
    return GRPOTrainer._compute_loss(stub, None, inputs)


def trl_inputs(old, adv, mask, ref, **more):
    """The batch dict TRL's ``_compute_loss`` reads; the logprobs themselves come from the stub."""
    n, t = mask.shape
    return {
        "prompt_ids": torch.zeros(n, 1, dtype=torch.long),
        "prompt_mask": torch.ones(n, 1, dtype=torch.long),
        "completion_ids": torch.zeros(n, t, dtype=torch.long),
        "completion_mask": mask,
        "advantages": adv,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        **more,
    }


def trl_gmpo_loss(logps, old, adv, mask, beta=0.0, ref=None, eps=0.4, eps_high=0.4):
    """TRL's experimental GMPOTrainer._compute_loss on given tensors; returns the loss and TRL's logged metrics."""
    from trl.experimental.gmpo import GMPOTrainer

    stub = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
        top_entropy_quantile=1.0,
        epsilon_low=eps,
        epsilon_high=eps_high,
        beta=beta,
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        accelerator=SimpleNamespace(gather=lambda x: x, reduce=lambda x, reduction="sum": x),
        _metrics=defaultdict(lambda: defaultdict(list)),
    )
    return GMPOTrainer._compute_loss(stub, None, trl_inputs(old, adv, mask, ref)), stub._metrics["train"]


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


def loss_and_grad(fn, logps):
    """A loss of ``logps`` [N, T] and its gradient, float64."""
    logps = logps.clone().requires_grad_(True)
    loss = fn(logps)
    (grad,) = torch.autograd.grad(loss, logps)
    return loss.item(), grad


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("seed", [0, 1])
def test_cispo_parity_with_trl_values_and_gradients(beta, seed):
    """CISPO: a far-off ratio (above epsilon_max) keeps its gradient through logp with its IS weight clipped and
    detached; TRL's ``loss_type='cispo'`` takes epsilon_max as ``epsilon_high``."""
    logps, old, ref, _, adv, mask = random_batch(seed)
    logps[0, 0], adv[0] = old[0, 0] + math.log(9.0), 1.5  # ratio 9, far above the bound, positive advantage
    logps[1, 0], adv[1] = old[1, 0] + math.log(0.05), -1.0  # ratio 0.05, negative advantage: CISPO clips above only
    cfg = LossConfig(loss_type="cispo", cispo_max_ratio=1.3, beta=beta, is_mode="none")
    ours, grad = loss_and_grad(lambda x: policy_loss(x, old, adv, mask, cfg, ref_logps=ref)[0], logps)
    theirs, want = loss_and_grad(
        lambda x: trl_loss(x, old, adv, mask, "cispo", beta=beta, ref=ref, eps_high=1.3), logps
    )
    assert abs(ours - theirs) < 1e-6 and (grad - want).abs().max() < 1e-6
    n_tok = mask.sum()
    # the clipped token: d/dlogp of -sg(min(r, 1.3)) * A * logp / tokens = -1.3 * 1.5 / tokens (plus the KL's)
    if beta == 0.0:
        assert grad[0, 0].item() == pytest.approx(-1.3 * 1.5 / n_tok.item(), abs=1e-12)
        assert grad[1, 0].item() == pytest.approx(0.05 * 1.0 / n_tok.item(), abs=1e-12)
    assert (grad[mask == 0] == 0).all()
    _, stats = policy_loss(logps, old, adv, mask, cfg, ref_logps=ref)
    assert stats.clip_ratio_high > 0 and stats.clip_ratio_low == 0.0


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("temperatures", [(1.0, 1.05), (0.5, 2.0)])
def test_sapo_parity_with_trl_values_and_gradients(beta, temperatures):
    logps, old, ref, _, adv, mask = random_batch(6)
    logps[0, 0] = old[0, 0] + math.log(20.0)  # far outside any clip range: the gate saturates, no hard cut
    cfg = LossConfig(
        loss_type="sapo",
        beta=beta,
        is_mode="none",
        sapo_temperature_pos=temperatures[0],
        sapo_temperature_neg=temperatures[1],
    )
    ours, grad = loss_and_grad(lambda x: policy_loss(x, old, adv, mask, cfg, ref_logps=ref)[0], logps)
    theirs, want = loss_and_grad(
        lambda x: trl_loss(x, old, adv, mask, "sapo", beta=beta, ref=ref, sapo_temperatures=temperatures), logps
    )
    assert abs(ours - theirs) < 1e-6 and (grad - want).abs().max() < 1e-6
    assert (grad[mask == 0] == 0).all()


def test_sapo_hand_computed():
    """One token, ratio r: -sigmoid(tau (r - 1)) * 4 / tau * A; at r = 1 the gate is 2 / tau, its slope 1 (GRPO's)."""
    m = torch.ones(1, 1)
    cfg = LossConfig(loss_type="sapo", is_mode="none", sapo_temperature_pos=1.0, sapo_temperature_neg=2.0)
    loss, _ = policy_loss(one(math.log(1.5)), one(0.0), torch.tensor([2.0], dtype=torch.float64), m, cfg)
    assert loss.item() == pytest.approx(-2.0 * 4 / (1 + math.exp(-0.5)))
    loss, _ = policy_loss(one(math.log(0.5)), one(0.0), torch.tensor([-1.0], dtype=torch.float64), m, cfg)
    assert loss.item() == pytest.approx(1.0 * 4 / 2.0 / (1 + math.exp(1.0)))
    _, grad = loss_and_grad(
        lambda x: policy_loss(x, one(0.0), torch.tensor([1.0], dtype=torch.float64), m, cfg)[0], one(0.0)
    )
    assert grad.item() == pytest.approx(-1.0)  # at r = 1: -A * dr/dlogp, as the unclipped ratio


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("eps", [(0.4, 0.4), (0.2, 0.3)])
def test_gmpo_parity_with_trl_values_gradients_and_clip_counts(beta, eps):
    logps, old, ref, _, adv, mask = random_batch(7)
    logps[0, 0], adv[0] = old[0, 0] + 2.0, 1.0  # log ratio far above the range, positive advantage: clipped
    logps[1, 0], adv[1] = old[1, 0] - 2.0, -1.0  # far below, negative advantage: clipped
    logps[2, 0], adv[2] = old[2, 0] - 2.0, 1.0  # far below, positive advantage: the pessimistic side, not clipped
    cfg = LossConfig(loss_type="gmpo", epsilon=eps[0], epsilon_high=eps[1], beta=beta, is_mode="none")
    ours, grad = loss_and_grad(lambda x: policy_loss(x, old, adv, mask, cfg, ref_logps=ref)[0], logps)
    theirs, want = loss_and_grad(
        lambda x: trl_gmpo_loss(x, old, adv, mask, beta=beta, ref=ref, eps=eps[0], eps_high=eps[1])[0], logps
    )
    assert abs(ours - theirs) < 1e-6 and (grad - want).abs().max() < 1e-6
    if beta == 0.0:
        assert grad[0, 0] == 0 and grad[1, 0] == 0  # a clipped token passes no policy gradient
    assert grad[2, 0] != 0
    _, stats = policy_loss(logps, old, adv, mask, cfg, ref_logps=ref)
    _, metrics = trl_gmpo_loss(logps, old, adv, mask, beta=beta, ref=ref, eps=eps[0], eps_high=eps[1])
    assert stats.clip_ratio_low == pytest.approx(metrics["clip_ratio/low_mean"][0], abs=1e-7)  # TRL counts in float32
    assert stats.clip_ratio_high == pytest.approx(metrics["clip_ratio/high_mean"][0], abs=1e-7)
    assert stats.clip_ratio_low > 0 and stats.clip_ratio_high > 0


def test_gmpo_hand_computed_geometric_mean():
    """Two tokens with ratios 4 and 1/4 (A = 1, log clip 2): geometric mean 1, loss -1; with log clip 0.5 the
    first is cut to e^0.5 and the second stays (pessimistic side): exp((0.5 - ln 4) / 2)."""
    m = torch.ones(1, 2)
    logps = torch.tensor([[math.log(4.0), -math.log(4.0)]], dtype=torch.float64)
    old, a = torch.zeros(1, 2, dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)
    loss, _ = policy_loss(
        logps, old, a, m, LossConfig(loss_type="gmpo", epsilon=2.0, epsilon_high=2.0, is_mode="none")
    )
    assert loss.item() == pytest.approx(-1.0)
    loss, s = policy_loss(
        logps, old, a, m, LossConfig(loss_type="gmpo", epsilon=0.5, epsilon_high=0.5, is_mode="none")
    )
    assert loss.item() == pytest.approx(-math.exp((0.5 - math.log(4.0)) / 2)) and s.clip_ratio_high == 0.5


@pytest.mark.parametrize("name", ["cispo_max_ratio", "sapo_temperature_pos", "sapo_temperature_neg"])
def test_the_new_losses_settings_must_be_above_zero(name):
    for value in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match=f"{name} must be above 0"):
            LossConfig(**{name: value})


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
