"""Run GRPO steps on one process of a torchrun job (or alone) and write, after every step, this process's view of
the whole policy and of AdamW's first moments, and the step's metrics: what ``test_parallel.py`` compares between
process counts and strategies.

Usage: ``[torchrun ...] tests/parallel_steps.py CONFIG.yaml OUT key=value ...`` (``save_at=K`` checkpoints after
step K; ``diverge_rng=1`` makes each process of a fresh run draw a different number of random values from every
generator, so that the processes' random states certainly differ). Writes ``OUT/rank{R}/step{K}.pt`` and
``start.pt`` (the parameters before this launch's first step).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import torch
from torch.distributed.tensor import DTensor
from transformers.modeling_layers import GradientCheckpointingLayer

from grpo_audio.config import load_config
from grpo_audio.parallel import full_tensor
from grpo_audio.trainer import GRPOTrainer


def main(config: str, out: str, args: list[str]) -> None:
    ours = ("save_at=", "diverge_rng=")
    save_at = [int(a.split("=", 1)[1]) for a in args if a.startswith("save_at=")]
    cfg = load_config(config, [a for a in args if not a.startswith(ours)])
    trainer = GRPOTrainer(cfg)
    if "diverge_rng=1" in args and trainer.step == 0:
        for _ in range(trainer.process.rank + 1):
            random.random(), np.random.rand(), torch.rand(1)
    rank = trainer.process.rank
    folder = Path(out) / f"rank{rank}"
    folder.mkdir(parents=True, exist_ok=True)
    names = {id(p): n for n, p in trainer.policy.named_parameters()}
    layers = [m for m in trainer.policy.modules() if isinstance(m, GradientCheckpointingLayer)]
    setup = {  # what the run really is: the tests check their premise with it
        "world_size": trainer.process.world_size,
        "wrapper": type(trainer.model).__name__,
        "sharded": any(isinstance(p, DTensor) for p in trainer.policy.parameters()),
        "logprob_path": trainer.logprob_path,
        "layers": len(layers),
        "checkpointed_layers": sum(m.gradient_checkpointing for m in layers),
        "run_id": trainer.lineage.run_id,
        "param_dtypes": sorted({str(p.dtype) for p in trainer.policy.parameters() if p.requires_grad}),
    }
    before = {n: full_tensor(p.detach()).clone() for n, p in trainer.policy.named_parameters()}
    torch.save({"params": before, "step": trainer.step}, folder / "start.pt")
    while trainer.step < cfg.train.max_steps:
        metrics = trainer.train_step()
        # Every process gathers every tensor, in the same order (collectives under FSDP2).
        params = {n: full_tensor(p.detach()).clone() for n, p in trainer.policy.named_parameters()}
        moments = {names[id(p)]: full_tensor(s["exp_avg"]).clone() for p, s in trainer.optimizer.state.items()}
        keep = {k: v for k, v in metrics.items() if isinstance(v, float)}
        torch.save({"params": params, "moments": moments, "metrics": keep}, folder / f"step{trainer.step}.pt")
        if trainer.step in save_at:
            trainer.save()
    (folder / "setup.json").write_text(json.dumps(setup))
    trainer.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
