"""Master weights and compute dtype: what a bf16 run trains in.

``model.dtype`` is the dtype the model computes in (rollout engine, evaluation, the trainer's forward passes);
``model.master_dtype`` the dtype the trained weights and AdamW's moments are kept in. By default (``float32``) a
bf16 or fp16 model is loaded in float32 and computes in its own dtype: under ``torch.autocast`` (one process, DDP,
supervised stages) and, under FSDP2, also through ``MixedPrecisionPolicy(param_dtype=model.dtype,
reduce_dtype=float32)`` (parameters gathered in bf16, gradients reduced in float32). This is the mixed precision of
PyTorch's AMP, accelerate's ``mixed_precision="bf16"`` and torchtitan's FSDP2 default.

``master_dtype: model`` keeps the weights in ``model.dtype`` (pure bf16, as torchtune's ``dtype: bf16``): half the
memory of the weights and optimiser state, but bf16 has 8 significant bits, so an AdamW step, about ``lr`` in size,
changes only weights smaller than ``lr / 2**-8``; at the paper's lr 1e-6 that is every weight above 2.6e-4 in
magnitude, almost all of them. The trainer warns at start with that bound (:func:`warn_if_updates_round_off`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Precision:
    """The dtypes of one run.

    Attributes:
        compute: what forward passes compute in (``model.dtype``).
        master: what trained weights and the optimiser's state are kept in.
    """

    compute: torch.dtype
    master: torch.dtype

    @property
    def mixed(self) -> bool:
        """Weights kept in another dtype than the one the model computes in."""
        return self.compute != self.master

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """``torch.autocast`` to the compute dtype when mixed; nothing otherwise. Around forward passes only: the
        backward follows the forward's dtypes by itself."""
        if not self.mixed:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.compute)


def precision_of(model: Any) -> Precision:
    """The precision of a ``config.ModelConfig`` (any object with ``dtype`` and, optionally, ``master_dtype``:
    ``float32`` when absent)."""
    compute = getattr(torch, model.dtype)
    keep = getattr(model, "master_dtype", "float32")
    if keep == "model":
        return Precision(compute, compute)
    if keep != "float32":
        raise ValueError(f"model.master_dtype '{keep}': choose float32 or model")
    # A float64 model (a reference computation) keeps float64: float32 masters would be the lower precision.
    return Precision(compute, compute if torch.finfo(compute).bits > 32 else torch.float32)


def largest_moved_weight(lr: float, dtype: torch.dtype) -> float:
    """The largest weight magnitude an update of size ``lr`` still changes in ``dtype`` (round to nearest: the
    update must reach half the spacing of representable values around the weight, ``|w| * eps / 2``)."""
    return lr / (torch.finfo(dtype).eps / 2)


def warn_if_updates_round_off(prec: Precision, lr: float, what: str = "train.lr") -> None:
    """Warn when weights are kept in a 16-bit dtype (pure bf16 / fp16, an opt-in), saying which weights an update
    of about ``lr`` (AdamW's step) still moves: at small learning rates, almost none of a trained model's (whose
    weights are 1e-2 to 1 in magnitude)."""
    if prec.master.is_floating_point and torch.finfo(prec.master).bits <= 16:
        name = str(prec.master).removeprefix("torch.")
        logger.warning(
            "weights and optimiser state kept in %s (model.master_dtype=model): the smallest update %s can make "
            "to a weight w is |w| * %.3g; at %s %g only weights below %.2g in magnitude move (typical weights "
            "are 1e-2 to 1). Set model.master_dtype=float32 to keep float32 master weights.",
            name,
            name,
            torch.finfo(prec.master).eps / 2,
            what,
            lr,
            largest_moved_weight(lr, prec.master),
        )


def compute_in(model: torch.nn.Module, prec: Precision, device: torch.device) -> Callable[[], None]:
    """Make ``model``'s forward run under :meth:`Precision.autocast` (for trainers that call the model
    themselves, TRL's SFTTrainer); returns the undo. Nothing changes when not mixed."""
    if not prec.mixed:
        return lambda: None
    forward = model.forward

    def autocast_forward(*args: Any, **kwargs: Any) -> Any:
        with prec.autocast(device):
            return forward(*args, **kwargs)

    model.forward = autocast_forward

    def undo() -> None:
        del model.forward  # the class's forward again

    return undo
