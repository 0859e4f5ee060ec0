"""``model.dtype`` reaches every model a run builds: the GRPO policy and its vLLM engine, a supervised stage's
model, and the evaluation engine. Asserted on the objects themselves. The tests share one process, as a recipe's
stages do: a supervised stage and a GRPO run in bf16 after float32 ones (accelerate keeps one state per process)."""

from __future__ import annotations

import math

import torch
import trl
from safetensors import safe_open

from grpo_audio.cli import main
from grpo_audio.config import load_config
from grpo_audio.data.loaders import load_manifest
from grpo_audio.data.synthetic import write_corpus
from grpo_audio.evaluate import evaluate_model
from grpo_audio.rollout.hf_engine import HFEngine
from grpo_audio.trainer import GRPOTrainer


def test_a_bf16_run_builds_the_policy_and_the_vllm_engine_in_bf16(tmp_path, tiny_checkpoint):
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
        assert {p.dtype for p in trainer.policy.parameters()} == {torch.bfloat16}
        assert trainer.engine.llm.llm_engine.model_config.dtype == torch.bfloat16
        metrics = trainer.train_step()  # a bf16 step end to end: rollout, logprobs, update, weight sync
        assert math.isfinite(metrics["loss"]) and metrics["skipped"] == 0.0
    finally:
        trainer.close()


def test_a_bf16_supervised_stage_trains_and_saves_bf16(tmp_path, tiny_checkpoint, monkeypatch):
    corpus = write_corpus(tmp_path / "data", n=2, seed=0, n_eval=0)
    seen = {}
    train = trl.SFTTrainer.train

    def spy(self, *args, **kwargs):
        seen["dtypes"] = {p.dtype for p in self.model.parameters()}
        seen["bf16"] = self.args.bf16
        return train(self, *args, **kwargs)

    monkeypatch.setattr(trl.SFTTrainer, "train", spy)
    out = tmp_path / "sft"
    argv = [f"model={tiny_checkpoint('music_flamingo')}", f"data={corpus['skills']}", f"output_dir={out}"]
    assert main(["sft", *argv, "dtype=bfloat16", "max_steps=1", "batch_size=2"]) == 0
    assert seen == {"dtypes": {torch.bfloat16}, "bf16": False}  # bf16 weights, no autocast on top
    with safe_open(str(out / "model" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}


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
