"""The GRPO family of policy losses (pure tensors, no I/O).

Per token t of completion i, with ratio r = exp(logp - old_logp) and advantage A_i:

    l_it = -min(r * A_i, clip(r, 1 - epsilon, 1 + epsilon_high) * A_i) + beta * KL_it

with KL the k3 estimator exp(ref - logp) - (ref - logp) - 1 (Schulman's unbiased, positive estimator).
Aggregation over the batch (``loss_type``), as TRL defines them:

- ``grpo``: mean over each sequence's tokens, then mean over sequences (the DeepSeekMath paper);
- ``bnpo``: mean over all tokens of the batch;
- ``dr_grpo``: sum over tokens / (sequences x max completion length) (Dr. GRPO, arXiv 2503.20783);
- ``dapo``: sum over tokens / tokens in the whole generation batch (DAPO, arXiv 2503.14476);
- ``gspo``: the sequence-level ratio exp(mean_t(logp - old_logp)) in place of the token ratio, ``grpo``
  aggregation (GSPO, arXiv 2507.18071).

Three losses change the per-token term itself, each as TRL (``loss_type``) and verl define it:

- ``cispo``: ``-sg(min(r, cispo_max_ratio)) * A * logp``: the IS weight is clipped and detached, so every token
  keeps a gradient (none is dropped by the clip), ``dapo`` aggregation (CISPO, MiniMax-M1, arXiv 2506.13585; the
  bound is ScaleRL's epsilon_max, arXiv 2510.13786);
- ``sapo``: ``-sigmoid(tau * (r - 1)) * 4 / tau * A``, a soft gate in place of the hard clip, with tau
  ``sapo_temperature_pos`` for A > 0 and ``sapo_temperature_neg`` otherwise, ``grpo`` aggregation (SAPO, arXiv
  2511.20347);
- ``gmpo``: the geometric mean of the token ratios, each clipped in log space to [-epsilon, epsilon_high] on the
  side the advantage's sign makes pessimistic: ``-exp(mean_t(clip(log r))) * A`` per sequence, mean over sequences
  (GMPO, arXiv 2507.20673; verl's ``geo_mean``, TRL's experimental GMPO trainer; the paper uses epsilon 0.4).

Rollout/trainer mismatch (vLLM's sampling logprobs vs the trainer's): the loss is multiplied by the
importance-sampling ratio exp(old_logp - sampling_logp), per token or per sequence, truncated at ``is_cap``
(``*_truncate``) or zeroed beyond it (``*_mask``), as in TRL and "Your efficient RL framework secretly brings you
off-policy RL training" (Yao et al., 2025).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .choices import IS_MODES, LOSS_TYPES


@dataclass
class LossConfig:
    """Settings of :func:`policy_loss`.

    Attributes:
        loss_type: one of LOSS_TYPES.
        epsilon: lower clip range (ratio >= 1 - epsilon).
        epsilon_high: upper clip range (ratio <= 1 + epsilon_high; DAPO's clip-higher raises it).
        beta: KL coefficient (0 disables the KL term).
        max_completion_length: ``dr_grpo``'s constant normaliser.
        is_mode: importance-sampling correction mode, one of IS_MODES.
        is_cap: upper bound of the IS ratio.
        is_min: lower bound for the ``*_mask`` modes (ratios below are zeroed), None for none.
        cispo_max_ratio: ``cispo``'s upper bound of the detached IS weight (ScaleRL's epsilon_max).
        sapo_temperature_pos: ``sapo``'s gate temperature for positive advantages.
        sapo_temperature_neg: ``sapo``'s gate temperature for zero and negative advantages.
    """

    loss_type: str = "dapo"
    epsilon: float = 0.2
    epsilon_high: float = 0.2
    beta: float = 0.0
    max_completion_length: int = 256
    is_mode: str = "token_truncate"
    is_cap: float = 2.0
    is_min: float | None = None
    cispo_max_ratio: float = 5.0
    sapo_temperature_pos: float = 1.0
    sapo_temperature_neg: float = 1.05

    def __post_init__(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.is_mode not in IS_MODES:
            raise ValueError(f"is_mode must be one of {IS_MODES}, got {self.is_mode!r}")
        for name in ("cispo_max_ratio", "sapo_temperature_pos", "sapo_temperature_neg"):
            if not getattr(self, name) > 0:  # NaN fails too
                raise ValueError(f"{name} must be above 0, got {getattr(self, name)!r}")


@dataclass
class LossStats:
    """Loss statistics (floats, for logging); masked means over completion tokens."""

    policy_loss: float
    kl: float
    clip_ratio_low: float
    clip_ratio_high: float
    clip_ratio_region: float
    is_ratio_mean: float
    is_ratio_min: float
    is_ratio_max: float
    is_masked_frac: float
    entropy: float


def importance_weights(
    old_logps: torch.Tensor, sampling_logps: torch.Tensor, mask: torch.Tensor, cfg: LossConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """IS ratio between the trainer's and the sampler's logprobs: [N, T] (token) or [N, 1] (sequence).

    Returns the (truncated or masked) ratio and the raw ratio before truncation/masking.
    """
    diff = torch.nan_to_num((old_logps - sampling_logps) * mask, nan=0.0)
    if cfg.is_mode.startswith("sequence"):
        diff = diff.sum(-1, keepdim=True)
    raw = torch.exp(diff)
    if cfg.is_mode.endswith("truncate"):
        return raw.clamp(max=cfg.is_cap), raw
    low = cfg.is_min if cfg.is_min is not None else -float("inf")
    return raw.masked_fill((raw > cfg.is_cap) | (raw < low), 0.0), raw


def policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: LossConfig,
    ref_logps: torch.Tensor | None = None,
    sampling_logps: torch.Tensor | None = None,
    entropies: torch.Tensor | None = None,
    num_sequences: int | None = None,
    num_tokens: float | None = None,
) -> tuple[torch.Tensor, LossStats]:
    """The policy loss of a (micro-)batch under ``cfg.loss_type`` (module docstring).

    Args:
        logps: [N, T] current policy logprobs of the completion tokens (with grad).
        old_logps: [N, T] logprobs when the rollouts were made (no grad).
        advantages: [N] per-completion advantages.
        mask: [N, T] 1 on completion tokens.
        cfg: loss settings.
        ref_logps: [N, T] reference-policy logprobs (needed when beta > 0).
        sampling_logps: [N, T] the rollout engine's logprobs (enables the IS correction unless is_mode=none).
        entropies: [N, T] per-token entropies, for logging only.
        num_sequences: sequences in the whole batch when this is one of several micro-batches (``grpo``,
            ``gspo``, ``sapo``, ``gmpo``, ``dr_grpo``); defaults to N.
        num_tokens: completion tokens in the whole generation batch (``dapo``, ``bnpo``, ``cispo``); defaults to
            mask.sum().

    Returns:
        The scalar loss (micro-batch losses sum to the batch loss) and its statistics.
    """
    mask = mask.to(logps.dtype)
    n_seq = num_sequences if num_sequences is not None else logps.shape[0]
    n_tok = num_tokens if num_tokens is not None else mask.sum().clamp(min=1.0)
    adv = advantages.unsqueeze(1)  # [N, 1]
    log_ratio = logps - old_logps  # [N, T]
    if cfg.loss_type == "gspo":
        log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)  # [N, 1]
    ratio = torch.exp(log_ratio)
    per_token, clipped_low, clipped_high = surrogate(logps, log_ratio, ratio, adv, mask, cfg)  # [N, T] or [N, 1]

    is_ratio = raw_is = None
    if sampling_logps is not None and cfg.is_mode != "none":
        is_ratio, raw_is = importance_weights(old_logps, sampling_logps, mask, cfg)
        per_token = per_token * is_ratio

    kl = None
    if cfg.beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta > 0 needs ref_logps")
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1  # [N, T], k3
        per_token = per_token + cfg.beta * kl
    per_token = per_token.expand_as(mask) if per_token.shape != mask.shape else per_token

    loss = aggregate(per_token, mask, cfg, n_seq, n_tok)
    stats = _stats(loss, clipped_low, clipped_high, mask, kl, is_ratio, raw_is, entropies)
    return loss, stats


def surrogate(
    logps: torch.Tensor,
    log_ratio: torch.Tensor,
    ratio: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    cfg: LossConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The policy term of ``cfg.loss_type`` (module docstring) before the IS correction and the KL term.

    Args:
        logps: [N, T] current logprobs; log_ratio, ratio: [N, T] (or [N, 1] for ``gspo``); adv: [N, 1];
        mask: [N, T] as floats.

    Returns:
        The per-token loss [N, T] (or [N, 1] for the sequence-level losses, ``gspo`` and ``gmpo``), and where the
        clip acted, [N, T] or [N, 1] booleans: below the range with A < 0, above it with A > 0.
    """
    if cfg.loss_type == "cispo":
        high = (ratio > cfg.cispo_max_ratio) & (adv > 0)
        weight = ratio.clamp(max=cfg.cispo_max_ratio).detach()
        return -weight * adv * logps.masked_fill(mask == 0, 0.0), torch.zeros_like(high), high
    if cfg.loss_type == "sapo":
        tau = torch.where(adv > 0, cfg.sapo_temperature_pos, cfg.sapo_temperature_neg).to(ratio.dtype)
        none = torch.zeros_like(ratio, dtype=torch.bool)
        return -torch.sigmoid(tau * (ratio - 1)) * 4 / tau * adv, none, none
    if cfg.loss_type == "gmpo":
        bounded = log_ratio.clamp(-cfg.epsilon, cfg.epsilon_high)
        pessimistic = torch.where(adv > 0, torch.minimum(log_ratio, bounded), torch.maximum(log_ratio, bounded))
        geometric = torch.exp((pessimistic * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1))
        return -geometric * adv, (log_ratio < -cfg.epsilon) & (adv < 0), (log_ratio > cfg.epsilon_high) & (adv > 0)
    clipped = torch.clamp(ratio, 1 - cfg.epsilon, 1 + cfg.epsilon_high)
    low = (ratio < 1 - cfg.epsilon) & (adv < 0)
    return -torch.min(ratio * adv, clipped * adv), low, (ratio > 1 + cfg.epsilon_high) & (adv > 0)


def aggregate(
    per_token: torch.Tensor, mask: torch.Tensor, cfg: LossConfig, num_sequences: int, num_tokens: float | torch.Tensor
) -> torch.Tensor:
    """The scalar loss from per-token losses [N, T] under ``cfg.loss_type``'s normalisation (module docstring)."""
    if cfg.loss_type in ("grpo", "gspo", "sapo", "gmpo"):
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).sum() / num_sequences
    if cfg.loss_type == "dr_grpo":
        return (per_token * mask).sum() / (num_sequences * cfg.max_completion_length)
    return (per_token * mask).sum() / num_tokens  # dapo, bnpo, cispo


@torch.no_grad()
def _stats(
    loss: torch.Tensor,
    clipped_low: torch.Tensor,
    clipped_high: torch.Tensor,
    mask: torch.Tensor,
    kl: torch.Tensor | None,
    is_ratio: torch.Tensor | None,
    raw_is: torch.Tensor | None,
    entropies: torch.Tensor | None,
) -> LossStats:
    """Masked means over completion tokens of the loss's terms; the clip masks are [N, T] or [N, 1]."""

    def masked_mean(x: torch.Tensor) -> float:
        x = x.expand_as(mask) if x.shape != mask.shape else x
        return ((x * mask).sum() / mask.sum().clamp(min=1.0)).item()

    low, high = clipped_low.to(mask.dtype), clipped_high.to(mask.dtype)
    raw_vals = raw_is.expand_as(mask)[mask.bool()] if raw_is is not None else None
    some_raw = raw_vals is not None and raw_vals.numel() > 0
    return LossStats(
        policy_loss=loss.item(),
        kl=masked_mean(kl) if kl is not None else 0.0,
        clip_ratio_low=masked_mean(low),
        clip_ratio_high=masked_mean(high),
        clip_ratio_region=masked_mean(torch.maximum(low, high)),
        is_ratio_mean=raw_vals.mean().item() if some_raw else 1.0,
        is_ratio_min=raw_vals.min().item() if some_raw else 1.0,
        is_ratio_max=raw_vals.max().item() if some_raw else 1.0,
        is_masked_frac=masked_mean((is_ratio == 0).float()) if is_ratio is not None else 0.0,
        entropy=masked_mean(entropies) if entropies is not None else float("nan"),
    )
