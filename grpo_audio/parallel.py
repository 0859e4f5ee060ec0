"""Data parallelism for the trainer: one process per device, launched by torchrun, the policy replicated (DDP) or
sharded (FSDP2).

Launch (one node, or several through torchrun's rendezvous)::

    torchrun --nproc_per_node 8 -m grpo_audio.cli train CONFIG.yaml parallel.strategy=fsdp2
    torchrun --nnodes 2 --node_rank R --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
        -m grpo_audio.cli train CONFIG.yaml parallel.strategy=fsdp2

Strategies (``parallel.strategy``):

- ``none``: one process, the model as it is.
- ``ddp``: ``DistributedDataParallel``; every process holds the whole model, gradients and optimiser state.
- ``fsdp2``: ``torch.distributed.fsdp.fully_shard`` (FSDP2), applied as torchtune does: each decoder layer and each
  trained audio-encoder block is its own unit, then the root. Parameters, gradients and optimiser state are split
  over the processes; a unit's parameters are gathered for its forward and backward only. Optional mixed precision
  (``compute_dtype``: gathered parameters in bf16, gradients reduced in float32, the sharded parameters and
  optimiser state in ``model.dtype``) and CPU offload of the sharded parameters, gradients and optimiser state.

A frozen audio encoder is not split into units: its output for a clip comes from the audio cache on some
processes and is computed on others, and every process must gather the same units in the same order. It stays in
the root unit, gathered with it once per forward.

Whatever the strategy, the wrapped module is a ``logprobs.LogprobModule``: every logprob pass is one forward of
the wrapper, so DDP's and FSDP2's hooks see the shared-prefix path's two passes (prompt, then completions).

On the CPU the process group is gloo, on GPUs NCCL. With one process (plain ``python``), ``ddp`` and ``fsdp2``
wrap nothing; checkpoints are the same (``torch.distributed.checkpoint``), so a run saved on N processes resumes
on any other number.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from transformers.modeling_layers import GradientCheckpointingLayer

from .choices import STRATEGIES

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class ProcessInfo:
    """Where this process sits: ``rank`` of ``world_size`` processes, ``local_rank`` on its node, its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


class Parallel:
    """The process group and the model wrapper of one training process.

    Args:
        strategy: one of ``STRATEGIES``.
        compute_dtype: FSDP2 only: the dtype parameters are gathered in for compute (``""``: the weights' own);
            gradients are then reduced in float32.
        cpu_offload: FSDP2 only: keep the sharded parameters, gradients and optimiser state in CPU memory.

    Raises:
        ValueError: an unknown strategy; several processes with ``none``; FSDP2 settings with another strategy.
    """

    def __init__(self, strategy: str = "ddp", compute_dtype: str = "", cpu_offload: bool = False):
        check_settings(strategy, compute_dtype, cpu_offload)
        world = launched_processes()
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
        if torch.cuda.is_available():
            torch.cuda.set_device(device)
        # The process group is this object's to end (close) if it starts it; a trainer inside a recipe shares the
        # recipe's.
        self.owns_group = world > 1 and not dist.is_initialized()
        if self.owns_group:
            # torchrun sets MASTER_ADDR/PORT (or its c10d rendezvous does), RANK and WORLD_SIZE: env:// reads them.
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        self.process = ProcessInfo(int(os.environ.get("RANK", "0")), world, local, device)
        self.strategy = strategy
        self.compute_dtype = getattr(torch, compute_dtype) if compute_dtype else None
        self.cpu_offload = cpu_offload

    # ---- the model --------------------------------------------------------------------------------------------
    @property
    def sharded(self) -> bool:
        """Parameters are split over the processes (FSDP2 on several processes)."""
        return self.strategy == "fsdp2" and self.process.distributed

    def wrap(
        self, module: torch.nn.Module, keep_whole: tuple[torch.nn.Module, ...] = (), trains: bool = True
    ) -> torch.nn.Module:
        """``module`` for training on this strategy (itself with one process or ``none``).

        Args:
            module: the module whose forward runs every pass (a ``logprobs.LogprobModule``), on its device.
            keep_whole: FSDP2: submodules whose blocks stay in the root unit (a frozen audio encoder, see the
                module docstring).
            trains: False for a frozen model (the reference policy): DDP leaves it as it is, FSDP2 shards it.
        """
        if not self.process.distributed or self.strategy == "none":
            return module
        if self.strategy == "ddp":
            if not trains:
                return module
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.process.device.index] if self.process.device.type == "cuda" else None
            return DistributedDataParallel(module, device_ids=device_ids)
        return self._fully_shard(module, keep_whole)

    def _fully_shard(self, module: torch.nn.Module, keep_whole: tuple[torch.nn.Module, ...]) -> torch.nn.Module:
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

        kwargs: dict = {}
        if self.compute_dtype is not None:
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=self.compute_dtype, reduce_dtype=torch.float32)
        if self.cpu_offload:
            kwargs["offload_policy"] = CPUOffloadPolicy()
        for name, block in shard_units(module, keep_whole):
            fully_shard(block, **kwargs)
            logger.debug("fsdp2 unit %s", name)
        fully_shard(module, **kwargs)
        return module

    def unwrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """The module under a DDP wrapper (FSDP2 shards in place: the module itself)."""
        return module.module if isinstance(module, torch.nn.parallel.DistributedDataParallel) else module

    # ---- collectives ------------------------------------------------------------------------------------------
    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` summed over the processes (a new tensor)."""
        return self.reduce(value, "sum")

    def reduce(self, value: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """``value`` reduced over the processes with ``op`` (``sum``, ``min`` or ``max``; a new tensor)."""
        value = value.detach().clone()
        if self.process.distributed:
            dist.all_reduce(value, {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op])
        return value

    def gather(self, value: torch.Tensor) -> torch.Tensor:
        """[world * n, ...]: every process's ``value`` [n, ...] (the same n everywhere), in rank order."""
        if not self.process.distributed:
            return value.detach()
        parts = [torch.empty_like(value) for _ in range(self.process.world_size)]
        dist.all_gather(parts, value.detach().contiguous())
        return torch.cat(parts)

    def barrier(self) -> None:
        if self.process.distributed:
            dist.barrier()

    def close(self) -> None:
        """End the process group this object started (idempotent). Left to the interpreter's exit, its threads are
        torn down mid-flight: a process can abort (SIGABRT, "terminate called without an active exception") after a
        finished run, and torchrun then reports the run failed. No barrier first: a process closing after an error
        must not wait for the others (they fail on the closed connections, and torchrun ends the job)."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self.owns_group = False

    def decide(self, decision: Callable[[], T]) -> T:
        """``decision()`` run by the main process alone, its result given to every process; an exception it raises
        is raised on every process. For what must be the same everywhere and is drawn or read once: the run's
        identity (a random id), what the output folder holds, the checkpoint to resume from. Every process calls
        it, in the same order (a collective).

        Raises:
            whatever ``decision`` raised on the main process (a copy of it on the others).
        """
        if not self.process.distributed:
            return decision()
        payload: list = [None]
        if self.process.is_main:
            try:
                payload[0] = (True, decision())
            except Exception as e:  # every process must leave the collective, then all raise it
                payload[0] = (False, e)
        dist.broadcast_object_list(payload, src=0)
        ok, value = payload[0]
        if not ok:
            raise value
        return value

    def sync_gradients(self, module: torch.nn.Module, sync: bool) -> None:
        """Whether the next backward of ``module`` reduces gradients over the processes: only the last micro-batch's
        needs to (DDP's ``require_backward_grad_sync``, the flag its ``no_sync`` sets; FSDP2's
        ``set_requires_gradient_sync``)."""
        if isinstance(module, torch.nn.parallel.DistributedDataParallel):
            module.require_backward_grad_sync = sync
        elif hasattr(module, "set_requires_gradient_sync"):
            module.set_requires_gradient_sync(sync)

    def clip_grad_norm(self, parameters: list[torch.nn.Parameter], max_norm: float) -> float:
        """Clip the gradients' global norm to ``max_norm`` (over every shard under FSDP2); the norm before."""
        norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        return float(norm)


def launched_processes() -> int:
    """The number of processes torchrun launched (``WORLD_SIZE``; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_settings(strategy: str, compute_dtype: str = "", cpu_offload: bool = False) -> None:
    """Refuse settings that cannot run here, before anything loads.

    Raises:
        ValueError: an unknown strategy; ``none`` on several processes; FSDP2's settings with another strategy;
            CPU offload without a GPU (FSDP2 keeps the offloaded shards in pinned memory, which needs one).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"parallel.strategy '{strategy}': choose one of {', '.join(STRATEGIES)}")
    if strategy != "fsdp2" and (compute_dtype or cpu_offload):
        raise ValueError(
            f"parallel.compute_dtype and parallel.cpu_offload need parallel.strategy=fsdp2 (it is '{strategy}')"
        )
    world = launched_processes()
    if strategy == "none" and world > 1:
        raise ValueError(f"launched on {world} processes but parallel.strategy is 'none'; use ddp or fsdp2")
    if cpu_offload and not torch.cuda.is_available():
        raise ValueError("parallel.cpu_offload needs GPUs: FSDP2 keeps the offloaded shards in pinned memory")


def shard_units(
    module: torch.nn.Module, keep_whole: tuple[torch.nn.Module, ...] = ()
) -> list[tuple[str, torch.nn.Module]]:
    """The blocks FSDP2 makes units of, except those inside ``keep_whole``: transformers' decoder layers and
    audio-encoder blocks (the modules it can checkpoint, ``GradientCheckpointingLayer``), and the input embedding
    and output head (torchtune's ``custom_sharded_layers``: a 152k vocabulary is over a billion parameters that
    the root unit would otherwise hold whole for the whole step), unless they share one weight (tied)."""
    inside = {id(m) for whole in keep_whole for m in whole.modules()}
    units = [m for m in module.modules() if isinstance(m, GradientCheckpointingLayer)]
    for m in module.modules():
        if hasattr(m, "get_output_embeddings") and hasattr(m, "get_input_embeddings"):
            ends = [m.get_input_embeddings(), m.get_output_embeddings()]
            if all(e is not None for e in ends) and ends[0].weight is not ends[1].weight:
                units += ends
    names = {id(m): name for name, m in module.named_modules()}
    seen: set[int] = set()
    found = []
    for m in units:
        if id(m) not in inside and id(m) not in seen and id(m) in names:
            seen.add(id(m))
            found.append((names[id(m)], m))
    return found


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a shard (``DTensor.full_tensor()``, a collective every process must call in the same
    order), or ``tensor`` itself."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def full_state(module: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``module``'s state dict one whole tensor at a time, gathered from the shards when FSDP2 split them: never
    the whole model in memory at once. Every process must iterate it to the end, in step."""
    for name, tensor in module.state_dict().items():
        yield name, full_tensor(tensor)
