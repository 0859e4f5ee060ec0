"""``model.dtype`` reaches every model a run builds: the GRPO policy's forward passes and its vLLM engine, a
supervised stage's model, and the evaluation engine; trained weights stay float32 (``model.master_dtype``) so that
small updates land. Asserted on the objects themselves and against AdamW computed in float64. The tests share one
process, as a recipe's stages do: a supervised stage and a GRPO run in bf16 after float32 ones (accelerate keeps one
state per process)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import trl
from safetensors import safe_open

from grpo_audio.cli import main
from grpo_audio.config import RecipeConfig, RunConfig, load_config
from grpo_audio.data.loaders import load_manifest
from grpo_audio.data.synthetic import write_corpus
from grpo_audio.eval import evaluate_model
from grpo_audio.models import load_policy
from grpo_audio.precision import precision_of, warn_if_updates_round_off
from grpo_audio.rollout.hf_engine import HFEngine
from grpo_audio.trainer import GRPOTrainer
from tests.test_trainer import toy_project

EXAMPLE_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "examples").rglob("*.yaml"))


def assert_update_is_adamw_in_float64(before: dict, after: dict, lr: float, weight_decay: float = 0.0) -> None:
    """``after`` (a step dump: ``params``, AdamW's first moments ``moments``) is one AdamW step from ``before``, as
    AdamW computes it in float64 from the same gradient (after one step, exp_avg = (1 - b1) g): to 1e-3 of the
    update, plus one float32 spacing of the weight (the float32 master's own rounding). And the step moved almost
    every trained weight: the premise (in bf16, an update of 1e-6 moves almost none)."""
    b1, b2, eps = 0.9, 0.999, 1e-8
    moved = total = 0
    for name, m in after["moments"].items():
        p0, p1 = before[name].double(), after["params"][name].double()
        assert after["params"][name].dtype == torch.float32, name
        g = m.double() / (1 - b1)
        v = (1 - b2) * g * g
        reference = p0 * (1 - lr * weight_decay) - lr / (1 - b1) * (1 - b1) * g / ((v / (1 - b2)).sqrt() + eps)
        expected, got = reference - p0, p1 - p0
        spacing = torch.finfo(torch.float32).eps * p0.abs()
        assert ((got - expected).abs() <= 1e-3 * expected.abs() + spacing).all(), name
        moved += int(((got != 0) & (g != 0)).sum())
        total += int((g != 0).sum())
    assert total > 1000 and moved >= 0.99 * total, (moved, total)


def bf16_overrides(tmp_path, checkpoint, **more):
    manifest, _ = toy_project(tmp_path, 4)
    return {
        "output_dir": tmp_path / "run",
        "model.path": checkpoint,
        "model.family": "audio_flamingo3",
        "model.dtype": "bfloat16",
        "data.train": manifest,
        "rollout.engine": "hf",
        "rollout.max_new_tokens": 6,
        "grpo.num_generations": 4,
        "train.prompts_per_step": 4,
        "train.lr": 1e-6,
        "train.warmup_ratio": 0.0,
        "train.lr_scheduler": "constant",
        "rewards": "[{name: 'toy_rewards:digits'}]",
        **more,
    }


def test_a_bf16_run_keeps_float32_master_weights_that_an_lr_1e6_step_moves(tmp_path, tiny_checkpoint, monkeypatch):
    """The paper's settings (bf16, lr 1e-6) on one process: float32 weights and AdamW state, forward passes in
    bf16 under autocast, and the step's update is AdamW's in float64."""
    overrides = bf16_overrides(tmp_path, tiny_checkpoint("audio_flamingo3"))
    monkeypatch.syspath_prepend(str(tmp_path))
    trainer = GRPOTrainer(load_config(None, [f"{k}={v}" for k, v in overrides.items()]))
    seen = []
    forward = trainer.policy.forward

    def spy(*args, **kwargs):
        out = forward(*args, **kwargs)
        seen.append((torch.is_autocast_enabled("cpu"), out.logits.dtype))
        return out

    trainer.policy.forward = spy
    try:
        names = {id(p): n for n, p in trainer.policy.named_parameters()}
        before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters()}
        metrics = trainer.train_step()
        assert metrics["skipped"] == 0.0 and metrics["reward/std"] > 0  # premise: a gradient to follow
        assert seen and set(seen) == {(True, torch.bfloat16)}  # the forward passes computed in bf16
        moments = {names[id(p)]: s["exp_avg"] for p, s in trainer.optimizer.state.items()}
        assert {s["exp_avg"].dtype for s in trainer.optimizer.state.values()} == {torch.float32}
        params = {n: p.detach() for n, p in trainer.policy.named_parameters()}
        assert_update_is_adamw_in_float64(before, {"params": params, "moments": moments}, lr=1e-6)
        saved = trainer.save() / "model" / "model.safetensors"  # the loadable model in the compute dtype
        with safe_open(str(saved), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    finally:
        trainer.close()


def test_pure_bf16_is_an_opt_in_that_warns_with_the_smallest_update(tmp_path, tiny_checkpoint, monkeypatch, caplog):
    overrides = bf16_overrides(tmp_path, tiny_checkpoint("audio_flamingo3"), **{"model.master_dtype": "model"})
    monkeypatch.syspath_prepend(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="grpo_audio.precision"):
        trainer = GRPOTrainer(load_config(None, [f"{k}={v}" for k, v in overrides.items()]))
    try:
        assert {p.dtype for p in trainer.policy.parameters()} == {torch.bfloat16}
        # bf16 has 8 significant bits: a step of 1e-6 moves weights below 1e-6 / 2**-8 = 2.56e-4 only.
        assert "only weights below 0.00026 in magnitude move" in caplog.text, caplog.text
        assert "model.master_dtype=float32" in caplog.text
    finally:
        trainer.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="grpo_audio.precision"):
        plain = {k: v for k, v in overrides.items() if k not in ("rewards", "model.master_dtype")}
        default = load_config(None, [f"{k}={v}" for k, v in plain.items()])
        assert (default.model.dtype, default.model.master_dtype) == ("bfloat16", "float32")
        warn_if_updates_round_off(precision_of(default.model), 1e-6)
    assert caplog.text == ""  # float32 masters, the default: nothing to warn about


def test_a_bf16_run_builds_the_vllm_engine_in_bf16(tmp_path, tiny_checkpoint):
    corpus = write_corpus(tmp_path / "data", n=2, seed=0, n_eval=0)
    overrides = {
        "output_dir": tmp_path / "run",
        "model.path": tiny_checkpoint("music_flamingo"),
        "model.family": "music_flamingo",
        "model.dtype": "bfloat16",
        "data.train": corpus["rl"],
        "rollout.engine": "vllm",
        "rollout.max_model_len": 1024,
    }
    trainer = GRPOTrainer(load_config(None, [f"{k}={v}" for k, v in overrides.items()]))
    try:
        assert {p.dtype for p in trainer.policy.parameters()} == {torch.float32}  # master weights
        assert trainer.engine.llm.llm_engine.model_config.dtype == torch.bfloat16
        metrics = trainer.train_step()  # a bf16 step end to end: rollout, logprobs, update, weight sync
        assert math.isfinite(metrics["loss"]) and metrics["skipped"] == 0.0
    finally:
        trainer.close()


def test_a_bf16_supervised_stage_trains_float32_masters_in_bf16_and_saves_bf16(tmp_path, tiny_checkpoint, monkeypatch):
    corpus = write_corpus(tmp_path / "data", n=2, seed=0, n_eval=0)
    seen = {}
    train = trl.SFTTrainer.train

    def spy(self, *args, **kwargs):
        seen["dtypes"] = {p.dtype for p in self.model.parameters()}
        seen["bf16"] = self.args.bf16
        linear = next(m for m in self.model.modules() if isinstance(m, torch.nn.Linear))

        def hook(module, inputs, output):  # inside the model's forward: autocast on, bf16 out of float32 weights
            seen["forward"] = (torch.is_autocast_enabled("cpu"), output.dtype)

        handle = linear.register_forward_hook(hook)
        try:
            return train(self, *args, **kwargs)
        finally:
            handle.remove()

    monkeypatch.setattr(trl.SFTTrainer, "train", spy)
    out = tmp_path / "sft"
    argv = [f"model={tiny_checkpoint('music_flamingo')}", f"data={corpus['skills']}", f"output_dir={out}"]
    assert main(["sft", *argv, "dtype=bfloat16", "max_steps=1", "batch_size=2"]) == 0
    # float32 master weights, accelerate's autocast off, ours on around the forward
    assert seen == {"dtypes": {torch.float32}, "bf16": False, "forward": (True, torch.bfloat16)}
    with safe_open(str(out / "model" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}


def example_learning_rates(path: Path) -> tuple[Any, list[float]]:
    """An example YAML's model settings and every learning rate it trains at (GRPO's, each stage's)."""
    text = path.read_text()
    cfg = load_config(path, schema=RecipeConfig if "\nstages:" in text else RunConfig)
    rates = [cfg.train.lr]
    for stage in getattr(cfg, "stages", []):
        if stage.kind == "grpo":
            rates.append(stage.grpo_overrides.get("train.lr", cfg.train.lr))
        elif stage.kind != "eval":
            rates.append(stage.lr)
    return cfg.model, [float(r) for r in rates if r]


@pytest.mark.parametrize("path", EXAMPLE_CONFIGS, ids=lambda p: p.name)
def test_every_example_config_moves_its_master_weights_at_its_learning_rates(path, tiny_checkpoint):
    """The model an example trains, in the dtype its weights are kept in, takes one AdamW step at each of its
    learning rates: almost every weight moves. In bf16 the smallest of these rates moves fewer, and at 1e-6
    almost none (the premise: full.yaml's lr 1e-6 is one the test would catch)."""
    model_cfg, rates = example_learning_rates(path)
    precision = precision_of(model_cfg)
    model = load_policy(model_cfg, tiny_checkpoint(model_cfg.family), dtype=precision.master)
    assert rates
    moved = {lr: one_adamw_step(model, lr) for lr in rates}
    assert min(moved.values()) >= 0.99, (path.name, moved)
    in_bf16 = one_adamw_step(model.to(torch.bfloat16), min(rates))  # the premise: bf16 weights would lose updates
    assert in_bf16 < min(0.1 if min(rates) <= 1e-6 else 1.0, moved[min(rates)]), (path.name, min(rates), in_bf16)


def one_adamw_step(model: torch.nn.Module, lr: float) -> float:
    """The fraction of weights one AdamW step of ``lr`` changes (on a copy), the gradient a random +-1."""
    import copy

    model = copy.deepcopy(model)
    params = [p for p in model.parameters() if p.is_floating_point()]
    before = [p.detach().clone() for p in params]
    generator = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randint(0, 2, p.shape, generator=generator).to(p.dtype) * 2 - 1
    torch.optim.AdamW(params, lr=lr, weight_decay=0.0).step()
    changed = sum(int((p.detach() != b).sum()) for p, b in zip(params, before, strict=True))
    return changed / sum(p.numel() for p in params)


def test_evaluation_builds_its_model_in_the_dtype_asked_for(tmp_path, tiny_checkpoint, monkeypatch):
    corpus = write_corpus(tmp_path / "data", n=1, seed=0, n_eval=1)
    rows = load_manifest(corpus["eval"], family="music_flamingo")[:1]
    seen = []
    generate = HFEngine.generate

    def spy(self, *args, **kwargs):
        seen.append({p.dtype for p in self.model.parameters()})
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(HFEngine, "generate", spy)
    for dtype in ("bfloat16", "float32"):
        evaluate_model(tiny_checkpoint("music_flamingo"), rows, engine="hf", max_new_tokens=2, dtype=dtype)
    assert seen == [{torch.bfloat16}, {torch.float32}]
