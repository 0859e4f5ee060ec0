"""Per-token logprobs of sampled completions under a model (policy, old policy, reference).

Two paths compute the same numbers:

- **shared prefix** (default, :func:`shared_prefix_logprobs`): for each group of G completions of one prompt,
  the full model (audio encoder, projector, language model) runs once on the prompt with ``use_cache=True``;
  the prompt's key/value cache is repeated G times (``DynamicCache.batch_repeat_interleave``) and only the
  language model runs on the G completions, attending to it. The first completion token's logits come from the
  prompt pass's last position. Gradients flow through the cache into the prompt pass, so the loss backward is
  exact. Several groups of different prompt lengths go in one batch: prompts are left-padded, and each
  completion's positions continue from its own prompt's length.
- **per sample** (:func:`completion_logprobs`): every completion is scored as its own sequence (prompt with
  audio, then completion), so the audio and the prompt run G times per group. It is the reference the shared
  path is tested against, and the fallback where the shared path does not apply.

Why a KV cache rather than packed sequences with a prefix-sharing attention mask: the cache path reuses the
models' own attention kernels (sdpa, flash) and their mask handling unchanged, needs no custom 4D masks (which
would force the slow eager/sdpa-with-mask kernels and break with flash attention), and its cost is what the
theory says, G(P+C) tokens down to P + GC, with no padding of G prompts.

At scale: both passes run inside one forward of :class:`LogprobModule`, the module DDP and FSDP2 wrap, so their
hooks (gradient reduction, parameter gathering) see them. Under activation checkpointing (``model.
gradient_checkpointing``) a decoder layer's forward runs again in the backward pass; transformers' own cache would
then append the prompt's keys a second time, so the shared path uses two caches of its own that give the same
answer however often a layer runs: :class:`PromptLayer` (prompt pass: keeps the layer's keys, returns them) and
:class:`PromptReadLayer` (completions pass: returns the prompt's keys followed by the completions', stores nothing).
:func:`enable_checkpointing` tells transformers' layers they may keep them under checkpointing.

Sequences for the per-sample path are right-aligned: ``[pad ... pad | prompt | completion (right-padded to C)]``,
so the completion occupies the last C positions. Logits are divided by the sampling temperature, top-k and top-p
keep the tokens the sampler kept (top-k first, then top-p on what is left, as vLLM and transformers order them;
the sampled token is always kept), and token ids the engines never sample (audio placeholders) are excluded, so
the logprobs are those of the distribution the rollout engine sampled from (vLLM's ``processed_logprobs``).
Without this, under top-k or top-p the trainer's logprobs would be the full vocabulary's while the engine's are
renormalised over the kept tokens, and the importance-sampling ratio would be the kept probability mass.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer
from transformers.modeling_layers import GradientCheckpointingLayer

from .data.collate import PromptBatch
from .models import family_of_model


def build_sequences(
    prompts: PromptBatch,
    row_index: list[int],
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    pad_id: int,
) -> dict[str, torch.Tensor]:
    """Model inputs for scoring completions.

    Args:
        prompts: the rollout's prompt batch.
        row_index: [N] prompt row of each completion.
        completion_ids: [N, C] right-padded completion ids.
        completion_mask: [N, C] 1 on completion tokens.
        pad_id: padding token id.

    Returns:
        ``input_ids`` [N, L], ``attention_mask`` [N, L], ``position_ids`` [N, L] and the audio tensors.
    """
    n, c = completion_ids.shape
    prompt_list = [prompts.prompt_ids(r) for r in row_index]
    width = max(len(p) for p in prompt_list) + c
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    for i, p in enumerate(prompt_list):
        start = width - c - len(p)
        input_ids[i, start : width - c] = p
        attention_mask[i, start : width - c] = 1
    input_ids[:, width - c :] = completion_ids
    attention_mask[:, width - c :] = completion_mask
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        **prompts.audio_for(row_index),
    }


def completion_logprobs(
    model: Any,
    prompts: PromptBatch,
    row_index: list[int],
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    pad_id: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
    banned_ids: list[int] | None = None,
    top_k: int = -1,
    top_p: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token logprobs [N, C] of the completions (and entropies [N, C] if asked), differentiable, under the
    sampling distribution: ``temperature``, ``top_k`` (-1 or 0: off) and ``top_p`` (1: off) as the engine used.

    ``banned_ids`` are excluded from the distribution, as the rollout engines exclude them when sampling
    (``rollout.base.banned_token_ids``). Call under ``torch.no_grad()`` for old-policy and reference passes.
    """
    inputs = to_model(model, build_sequences(prompts, row_index, completion_ids, completion_mask, pad_id))
    device = inputs["input_ids"].device
    c = completion_ids.shape[1]
    out = model(**inputs, use_cache=False, logits_to_keep=c + 1)
    return _token_logprobs(
        out.logits[:, -c - 1 : -1], completion_ids.to(device), temperature, banned_ids, with_entropy, top_k, top_p
    )


def to_model(model: Any, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Move inputs to the model's device; audio features (float) to its dtype (bf16 models get bf16 features)."""
    param = next(model.parameters())
    return {
        k: v.to(param.device, param.dtype) if v.is_floating_point() else v.to(param.device) for k, v in inputs.items()
    }


def sampling_filter(logits: torch.Tensor, ids: torch.Tensor, top_k: int = -1, top_p: float = 1.0) -> torch.Tensor:
    """``logits`` [..., V] with the tokens top-k / top-p would not sample set to -inf; the tokens ``ids`` [...]
    (the ones sampled) are always kept. Top-k keeps the k largest logits (ties included), then top-p keeps the
    smallest set of the remaining tokens whose probability reaches ``top_p`` (vLLM's ``apply_top_k_top_p`` and
    transformers' ``TopKLogitsWarper`` / ``TopPLogitsWarper`` do the same, in that order).

    >>> x = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    >>> sampling_filter(x, torch.tensor([0]), top_k=2).tolist()
    [[1.0, 3.0, 2.0, -inf]]
    >>> sampling_filter(x, torch.tensor([2]), top_p=0.5).tolist()
    [[-inf, 3.0, 2.0, -inf]]
    """
    vocab = logits.shape[-1]
    use_k, use_p = 0 < top_k < vocab, top_p < 1.0
    if not use_k and not use_p:
        return logits
    with torch.no_grad():
        ascending, order = logits.detach().sort(dim=-1)
        remove = torch.zeros_like(ascending, dtype=torch.bool)
        if use_k:
            remove |= ascending < ascending[..., vocab - top_k : vocab - top_k + 1]
        if use_p:
            cumulative = ascending.masked_fill(remove, float("-inf")).softmax(-1).cumsum(-1)
            remove |= cumulative <= 1 - top_p
            remove[..., -1] = False  # the most likely token always stays
        mask = torch.zeros_like(remove).scatter(-1, order, remove)
        mask.scatter_(-1, ids.unsqueeze(-1), False)
    return logits.masked_fill(mask, float("-inf"))


def _token_logprobs(
    logits: torch.Tensor,
    ids: torch.Tensor,
    temperature: float,
    banned_ids: list[int] | None,
    with_entropy: bool,
    top_k: int = -1,
    top_p: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """logprobs [N, C] of ``ids`` [N, C] under ``logits`` [N, C, V] (temperature, banned ids, top-k / top-p),
    entropies of that distribution."""
    logits = logits.float()
    if temperature not in (0.0, 1.0):
        logits = logits / temperature
    if banned_ids:
        logits = logits.index_fill(-1, torch.tensor(banned_ids, device=logits.device), float("-inf"))
    logits = sampling_filter(logits, ids, top_k, top_p)
    logp_all = torch.log_softmax(logits, dim=-1)  # [N, C, V]
    logps = logp_all.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            p = logp_all.exp()
            entropy = -(p * logp_all.masked_fill(p == 0, 0.0)).sum(-1)
    return logps, entropy


def shared_prefix_logprobs(
    model: Any,
    prompts: PromptBatch,
    rows: list[int],
    group_size: int,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    pad_id: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
    banned_ids: list[int] | None = None,
    top_k: int = -1,
    top_p: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token logprobs [B*G, C] of G completions per prompt, each prompt (and its audio) computed once.

    Args:
        model: the policy (a transformers model of an AF3-style family, possibly PEFT-wrapped, not DDP-wrapped).
        prompts: the rollout's prompt batch.
        rows: [B] prompt rows, one per group; completion ``b * G + j`` belongs to ``rows[b]``.
        group_size: G.
        completion_ids: [B*G, C] right-padded completion ids.
        completion_mask: [B*G, C] 1 on completion tokens.
        pad_id, temperature, with_entropy, banned_ids, top_k, top_p: as in :func:`completion_logprobs`.
    """
    device = next(model.parameters()).device
    b, g = len(rows), group_size
    n, c = completion_ids.shape
    if n != b * g:
        raise ValueError(f"{n} completions for {b} groups of {g}")
    prompt_list = [prompts.prompt_ids(r) for r in rows]
    p = max(len(x) for x in prompt_list)
    prefix_ids = torch.full((b, p), pad_id, dtype=torch.long)
    prefix_mask = torch.zeros((b, p), dtype=torch.long)
    for i, ids in enumerate(prompt_list):
        prefix_ids[i, p - len(ids) :] = ids
        prefix_mask[i, p - len(ids) :] = 1
    prefix_pos = (prefix_mask.cumsum(-1) - 1).clamp(min=0)
    inputs = {
        "input_ids": prefix_ids,
        "attention_mask": prefix_mask,
        "position_ids": prefix_pos,
        **prompts.audio_for(rows),
    }
    family = family_of_model(model)  # where its language model and output head live
    language_model, lm_head = family.language_model(model), family.lm_head(model)
    prompt_cache = Cache(layers=[PromptLayer() for _ in range(language_model.config.num_hidden_layers)])
    out = model(**to_model(model, inputs), past_key_values=prompt_cache, use_cache=True, logits_to_keep=1)
    first_logits = out.logits[:, -1].repeat_interleave(g, dim=0)  # [B*G, V]: predicts each completion's token 1

    completion_ids, completion_mask = completion_ids.to(device), completion_mask.to(device)
    if c > 1:
        cache = Cache(layers=[PromptReadLayer(layer, g) for layer in prompt_cache.layers])
        feed = completion_ids[:, :-1]  # tokens 1..C-1 predict tokens 2..C
        lengths = prefix_mask.sum(-1).to(device).repeat_interleave(g)  # [B*G]
        positions = lengths[:, None] + torch.arange(c - 1, device=device)[None, :]
        attention = torch.cat([prefix_mask.to(device).repeat_interleave(g, dim=0), completion_mask[:, :-1]], dim=1)
        hidden = language_model(
            input_ids=feed, attention_mask=attention, position_ids=positions, past_key_values=cache, use_cache=True
        ).last_hidden_state
        logits = torch.cat([first_logits[:, None], lm_head(hidden)], dim=1)  # [B*G, C, V]
    else:
        logits = first_logits[:, None]
    return _token_logprobs(logits, completion_ids, temperature, banned_ids, with_entropy, top_k, top_p)


# ---- which path, and one micro-batch on it ----------------------------------------------------------------------
LOGPROB_PATHS = ("shared_prefix", "per_sample")


def choose_path(shared_prefix: bool) -> str:
    """The logprob path of a run: ``shared_prefix`` when ``grpo.shared_prefix`` asks for it, else ``per_sample``.
    Both run with or without activation checkpointing (:func:`enable_checkpointing`) and under DDP and FSDP2
    (through :class:`LogprobModule`)."""
    return "shared_prefix" if shared_prefix else "per_sample"


def enable_checkpointing(model: Any) -> None:
    """Activation checkpointing per decoder layer and audio-encoder block (transformers' non-reentrant
    ``torch.utils.checkpoint``); the layers keep the shared path's caches (:class:`PromptLayer`,
    :class:`PromptReadLayer`), which give the same keys when a layer runs again in the backward pass."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module._can_checkpoint_with_cache = True


class PromptLayer(DynamicLayer):
    """The prompt pass's cache of one layer: keeps the prompt's keys and values [B, H, P, D] and returns them.
    Running the layer again (activation checkpointing) stores the same values again, never appends."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys, self.values = key_states, value_states
        return key_states, value_states


class PromptReadLayer(DynamicLayer):
    """The completions pass's cache of one layer: the prompt's keys and values [B, H, P, D], each repeated G times
    when read, followed by the completions' own (gradients flow back into the prompt pass through them); stores
    nothing, so a layer run again returns the same keys. The repeat happens in ``update``, not here: under
    activation checkpointing the cache lives until the backward pass, and G copies of the prompt's keys with it."""

    def __init__(self, prompt: DynamicLayer, group_size: int):
        super().__init__()
        self.lazy_initialization(prompt.keys, prompt.values)
        self.keys, self.values, self.group_size = prompt.keys, prompt.values, group_size

    def get_seq_length(self) -> int:
        return self.keys.shape[-2]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        g = self.group_size
        keys = torch.cat([self.keys.repeat_interleave(g, dim=0), key_states], dim=-2)
        return keys, torch.cat([self.values.repeat_interleave(g, dim=0), value_states], dim=-2)


class LogprobModule(torch.nn.Module):
    """The policy behind one ``forward`` per logprob pass: what DDP and FSDP2 wrap (``parallel.Parallel.wrap``).

    The shared path calls the model on the prompts, then its language model and head on the completions; wrapped
    directly, DDP would reduce no gradient of the second pass and FSDP2 would not gather the root's parameters
    for it. As one forward of this module, both passes run under the wrappers' hooks.

    Args:
        model: the policy (a transformers model of a family, possibly PEFT-wrapped).
        path: ``shared_prefix`` or ``per_sample`` (:func:`choose_path`).
    """

    def __init__(self, model: torch.nn.Module, path: str):
        super().__init__()
        if path not in LOGPROB_PATHS:
            raise ValueError(f"unknown logprob path '{path}'; choose one of: {', '.join(LOGPROB_PATHS)}")
        self.model = model
        self.path = path

    def forward(
        self,
        prompts: PromptBatch,
        row_index: list[int],
        group_size: int,
        idx: list[int],
        completion_ids: torch.Tensor,
        completion_mask: torch.Tensor,
        pad_id: int,
        **sampling: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:func:`batch_logprobs` of the micro-batch ``idx`` on this module's path (new tensors, not views: FSDP2
        hooks the backward of what its root returns, and an in-place change of a view would skip that hook)."""
        logps, entropies = batch_logprobs(
            self.model,
            self.path,
            prompts,
            row_index,
            group_size,
            idx,
            completion_ids,
            completion_mask,
            pad_id,
            **sampling,
        )
        return logps.clone(), entropies


def micro_batches(n: int, group_size: int, micro_batch_size: int, path: str) -> list[list[int]]:
    """Index lists over N = B * G completions, one forward and backward each: on the shared-prefix path whole
    groups (``micro_batch_size // G`` of them, at least one), on the per-sample path up to ``micro_batch_size``
    completions.

    >>> micro_batches(8, 4, 4, "shared_prefix"), micro_batches(5, 1, 2, "per_sample")
    ([[0, 1, 2, 3], [4, 5, 6, 7]], [[0, 1], [2, 3], [4]])
    """
    mb = max(1, micro_batch_size)
    if path == "shared_prefix":
        per = max(1, mb // group_size)
        return [list(range(s * group_size, min(n, (s + per) * group_size))) for s in range(0, n // group_size, per)]
    return [list(range(s, min(n, s + mb))) for s in range(0, n, mb)]


def batch_logprobs(
    model: Any,
    path: str,
    prompts: PromptBatch,
    row_index: list[int],
    group_size: int,
    idx: list[int],
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    pad_id: int,
    **sampling: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logprobs [len(idx), C] (and entropies) of the completions ``idx`` on ``path``.

    Args:
        row_index: [N] prompt row of each completion; ``idx``: the micro-batch (whole groups on the shared path).
        sampling: ``temperature``, ``with_entropy``, ``banned_ids``, ``top_k``, ``top_p`` (see
            :func:`completion_logprobs`).
    """
    if path == "shared_prefix":
        groups = [row_index[i] for i in idx[::group_size]]
        return shared_prefix_logprobs(
            model, prompts, groups, group_size, completion_ids[idx], completion_mask[idx], pad_id, **sampling
        )
    if path != "per_sample":
        raise ValueError(f"unknown logprob path '{path}'; choose one of: {', '.join(LOGPROB_PATHS)}")
    rows = [row_index[i] for i in idx]
    return completion_logprobs(model, prompts, rows, completion_ids[idx], completion_mask[idx], pad_id, **sampling)
