"""The GRPO trainer: learning on a toy task, one step with vLLM, metrics and plots, checkpoints and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from grpo_audio.checkpoint import (
    PAUSE_ENV,
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    new_lineage,
    save_checkpoint,
)
from grpo_audio.choices import LOSS_TYPES
from grpo_audio.config import load_config
from grpo_audio.data.schema import Row
from grpo_audio.eval import paired_difference, sampled_eval
from grpo_audio.loss import policy_loss
from grpo_audio.rewards import RewardSet
from grpo_audio.rollout import SamplingConfig
from grpo_audio.trainer import GRPOTrainer

REPO = Path(__file__).resolve().parents[1]


def digits(prompts, completions, **columns):
    """Toy reward: the share of characters that are digits (dense, so every group has a signal)."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(1, len(t)) for t in texts]


def tone_rows(n, prefix="r"):
    t = np.arange(16000) / 16000
    return [
        Row(
            id=f"{prefix}{i}",
            audio=(0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t)).astype(np.float32),
            sampling_rate=16000,
            prompt="What is the tempo in BPM?",
            answer="120",
            metadata={"tempo": 120},
        )
        for i in range(n)
    ]


def config(tmp_path, checkpoint, family="audio_flamingo3", **overrides):
    base = {
        "output_dir": str(tmp_path / "run"),
        "model.path": str(checkpoint),
        "model.family": family,
        "rollout.engine": "hf",
        "rollout.max_new_tokens": 8,
        "grpo.num_generations": 8,
        "train.prompts_per_step": 4,
        "train.lr": 3e-3,
        "train.warmup_ratio": 0.0,
        "train.lr_scheduler": "constant",
        "train.micro_batch_size": 16,
        "train.resume": "never",
        "grpo.loss_type": "dapo",
    }
    base.update(overrides)
    return load_config(None, [f"{k}={v}" for k, v in base.items()])


def test_learns_a_toy_task_and_writes_metrics_and_plot(tmp_path, tiny_checkpoint):
    cfg = config(
        tmp_path,
        tiny_checkpoint("audio_flamingo3"),
        **{"train.max_steps": 20, "train.eval_every": 10, "train.samples_per_eval": 3},
    )
    rewards = RewardSet([digits, (RewardSet.from_specs([{"name": "answer_accuracy"}]).rewards[0][0], 0.0)])
    trainer = GRPOTrainer(cfg, reward_funcs=rewards, train_rows=tone_rows(8), eval_rows=tone_rows(3, "e"))
    held_out = tone_rows(6, "h")

    def sampled():  # what GRPO optimises: the reward of sampled completions, on prompts it never trained on
        return sampled_eval(trainer.engine, held_out, rewards, 4, SamplingConfig.from_config(cfg.rollout), seed=1)

    before = sampled()
    trainer.train()
    records = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "reward/mean" in r]
    first = np.mean([r["reward/mean"] for r in train[:3]])
    last = np.mean([r["reward/mean"] for r in train[-3:]])
    assert last > first + 0.15, (first, last)  # the policy learned to write digits
    # The learning check: the held-out sampled reward rose by at least 0.1, and the paired interval is above 0.
    gain = paired_difference(sampled(), before)
    assert gain.value >= 0.1 and gain.low > 0, gain

    expected = {
        "reward/mean",
        "reward/std",
        "rewards/digits/mean",
        "rewards/digits/std",
        "rewards/answer_accuracy/mean",
        "advantages/mean",
        "advantages/std",
        "loss",
        "kl",
        "clip_ratio_low",
        "clip_ratio_high",
        "clip_ratio_region",
        "is_ratio_mean",
        "is_ratio_max",
        "is_ratio_min",
        "entropy",
        "completions/mean_length",
        "completions/max_length",
        "completions/truncation_rate",
        "frac_zero_std_groups",
        "tokens_per_s/rollout",
        "tokens_per_s/update",
        "time/rollout_s",
        "time/update_s",
        "time/sync_s",
        "time/step_s",
        "grad_norm",
        "lr",
    }
    assert expected <= set(train[-1]), expected - set(train[-1])
    assert [r["step"] for r in train] == list(range(1, 21))
    assert any("eval/rewards/digits/mean" in r for r in records if r["step"] in (0, 10, 20))
    assert (tmp_path / "run/curves.png").stat().st_size > 10_000
    assert list((tmp_path / "run/tb").iterdir())
    samples = [json.loads(x) for x in (tmp_path / "run/samples.jsonl").read_text().splitlines()]
    assert len(samples) == 9 and {"completion", "reward", "step"} <= set(samples[0])
    ckpt = latest_checkpoint(tmp_path / "run/checkpoints")
    assert ckpt is not None and ckpt.name == "step-000020"
    family = trainer.family
    loaded = family.model_class().from_pretrained(ckpt / "model")
    assert torch.equal(loaded.lm_head.weight, trainer.policy.lm_head.weight)


def test_eval_averages_several_sampled_completions_per_prompt(tmp_path, tiny_checkpoint):
    seen = []

    def recorded(prompts, completions, id, **columns):
        values = digits(prompts, completions)
        seen.append((list(id), values))
        return values

    cfg = config(
        tmp_path,
        tiny_checkpoint("audio_flamingo3"),
        **{"train.eval_generations": 3, "train.eval_temperature": 1.0, "train.samples_per_eval": 6},
    )
    rows, eval_rows = tone_rows(4), tone_rows(2, "e")
    trainer = GRPOTrainer(cfg, reward_funcs=RewardSet([recorded]), train_rows=rows, eval_rows=eval_rows)
    metrics = trainer.evaluate()
    ids, values = seen[-1]
    assert ids == ["e0", "e0", "e0", "e1", "e1", "e1"]
    assert metrics["eval/rewards/recorded/mean"] == pytest.approx(np.mean(values))
    samples = [json.loads(x) for x in (tmp_path / "run/samples.jsonl").read_text().splitlines()]
    assert [s["id"] for s in samples] == ids
    assert [s["reward"] for s in samples] == pytest.approx(values)

    with pytest.raises(ValueError, match="train.eval_generations"):  # refused when the config is read
        config(tmp_path, tiny_checkpoint("audio_flamingo3"), **{"train.eval_generations": 0})
    cfg.train.eval_generations = 0  # and by the trainer, for a config built in code
    with pytest.raises(ValueError, match="train.eval_generations"):
        GRPOTrainer(cfg, reward_funcs=RewardSet([recorded]), train_rows=tone_rows(4))


def test_train_tasks_keeps_the_rows_of_those_tasks(tmp_path, tiny_checkpoint):
    rows = tone_rows(6)
    for i, row in enumerate(rows):
        row.task = ("caption", "chord", "key")[i % 3]
    cfg = config(tmp_path, tiny_checkpoint("audio_flamingo3"), **{"data.train_tasks": "[chord,key]"})
    trainer = GRPOTrainer(cfg, reward_funcs=RewardSet([digits]), train_rows=rows)
    assert [r.id for r in trainer.train_rows] == ["r1", "r2", "r4", "r5"]
    cfg = config(tmp_path, tiny_checkpoint("audio_flamingo3"), **{"data.train_tasks": "[meter]"})
    with pytest.raises(ValueError, match=r"data.train_tasks \['meter'\]: no training row .*caption"):
        GRPOTrainer(cfg, reward_funcs=RewardSet([digits]), train_rows=rows)


def test_dynamic_sampling_drops_groups_without_signal(tmp_path, tiny_checkpoint):
    def only_odd(prompts, completions, id, **columns):
        return [0.5 if int(i[1:]) % 2 == 0 else d for i, d in zip(id, digits(prompts, completions), strict=True)]

    cfg = config(
        tmp_path,
        tiny_checkpoint("audio_flamingo3"),
        **{"train.max_steps": 1, "grpo.dynamic_sampling": True, "grpo.max_resample_rounds": 3},
    )
    trainer = GRPOTrainer(cfg, reward_funcs=RewardSet([only_odd]), train_rows=tone_rows(8))
    step = trainer.collect_rollouts()
    rows = step.rows
    assert len(rows) == 4 and all(int(r.id[1:]) % 2 == 1 for r in rows)
    assert step.resample_rounds >= 1 and step.frac_zero_std_groups > 0
    assert step.rollouts.row_ids == [r.id for r in rows for _ in range(8)] and len(step.rewards.total) == 32


def test_dynamic_sampling_says_when_its_rounds_found_too_few_groups(tmp_path, tiny_checkpoint, caplog):
    def constant(prompts, completions, **columns):
        return [1.0] * len(completions)

    cfg = config(
        tmp_path,
        tiny_checkpoint("audio_flamingo3"),
        **{"train.max_steps": 1, "grpo.dynamic_sampling": True, "grpo.max_resample_rounds": 2},
    )
    trainer = GRPOTrainer(cfg, reward_funcs=RewardSet([constant]), train_rows=tone_rows(8))
    with caplog.at_level("WARNING", logger="grpo_audio.trainer"):
        step = trainer.collect_rollouts()
    assert step.resample_rounds == 2 and step.frac_zero_std_groups == 1.0  # the premise: no group had a spread
    assert "step 1: 0 of 4 groups have a reward spread after 2 resampling round(s)" in caplog.text
    assert "no group moves the policy this step" in caplog.text


def test_one_step_with_vllm_on_music_flamingo(tmp_path, tiny_checkpoint):
    """Trainable weights change, frozen ones are bit-identical, the next rollout samples from the new weights."""
    from tests.rollout.helpers import chord_clip, hf_logprobs, rows_for

    path = tiny_checkpoint("music_flamingo")
    cfg = config(
        tmp_path,
        path,
        family="music_flamingo",
        **{
            "rollout.engine": "vllm",
            "rollout.max_model_len": 1024,
            "model.freeze_audio_encoder": True,
            "train.max_steps": 1,
            "train.lr": 1e-2,
        },
    )
    trainer = GRPOTrainer(cfg, reward_funcs=RewardSet([digits]), train_rows=tone_rows(4))
    try:
        before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters()}
        metrics = trainer.train_step()
        after = dict(trainer.policy.named_parameters())
        frozen = [n for n in before if n.startswith(trainer.family.audio_encoder_prefixes)]
        trainable = [n for n in before if n not in frozen]
        assert frozen and all(torch.equal(before[n], after[n]) for n in frozen)
        assert sum(not torch.equal(before[n], after[n]) for n in trainable) > len(trainable) // 2
        assert metrics["is_ratio_max"] < 1.01 and metrics["is_ratio_min"] > 0.99  # vLLM and trainer agree

        rows = rows_for([chord_clip(3.0)])
        tok = trainer.tokenizer
        comps = [tok("<answer>120 BPM</answer>", add_special_tokens=False)["input_ids"]]
        got = torch.tensor(trainer.engine.completion_logprobs(rows, comps)[0])
        new = hf_logprobs(trainer.policy.eval(), trainer.family, trainer.processor, rows, comps)[0]
        old_model = trainer.family.model_class().from_pretrained(path).eval()
        old = hf_logprobs(old_model, trainer.family, trainer.processor, rows, comps)[0]
        assert (got - new).abs().max() < 1e-3 and (got - old).abs().max() > 1e-2
    finally:
        trainer.close()


class Opt:
    """Stands in for an optimiser or scheduler in checkpoint tests: something with a state dict."""

    def state_dict(self):
        return {"x": 1}


def write_model(folder, write):
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x")


def saved_state(checkpoint: Path) -> dict:
    """A checkpoint's DCP ``state/`` whole (``{"model": ..., "optimizer": ...}``), without a model to load it into."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    whole = checkpoint.parent / f"{checkpoint.name}.pt"
    dcp_to_torch_save(checkpoint / "state", whole)
    return torch.load(whole, weights_only=False)


def test_half_written_checkpoints_are_never_picked_up(tmp_path):
    root = tmp_path / "checkpoints"
    save_checkpoint(root, 2, write_model, {"w": torch.ones(2)}, Opt(), {"step": 2}, keep_last=2)
    (root / ".tmp-step-000004-999").mkdir()  # a save killed half-way
    (root / "step-000005").mkdir()  # a folder without the COMPLETE marker
    (root / "step-000005" / "scheduler.pt").write_bytes(b"")
    assert latest_checkpoint(root).name == "step-000002"
    for step in (3, 4, 6):
        save_checkpoint(root, step, write_model, {"w": torch.ones(2) * step}, Opt(), {"step": step}, 2)
    assert not list(root.glob(".tmp-*"))
    assert sorted(p.name for p in root.iterdir() if (p / "COMPLETE").exists()) == ["step-000004", "step-000006"]
    assert latest_checkpoint(root).name == "step-000006"


RESUME_YAML = """
output_dir: {out}
seed: 3
model: {{path: {model}, family: audio_flamingo3}}
data: {{train: {manifest}}}
rollout: {{engine: hf, max_new_tokens: 6}}
grpo: {{num_generations: 4, loss_type: grpo, num_iterations: 2}}
train: {{lr: 0.003, max_steps: 6, prompts_per_step: 2, save_every: 2, keep_last: 2, warmup_ratio: 0.2,
         micro_batch_size: 3, resume: auto}}
rewards: [{{name: "toy_rewards:digits"}}]
"""


def toy_project(tmp_path: Path, n: int) -> tuple[Path, dict[str, str]]:
    """A manifest of n tones and an importable module with the digits reward, for runs in subprocesses."""
    (tmp_path / "toy_rewards.py").write_text(
        "def digits(prompts, completions, **kw):\n"
        "    t = [c[0]['content'] for c in completions]\n"
        "    return [sum(ch.isdigit() for ch in s) / max(1, len(s)) for s in t]\n"
    )
    for i, row in enumerate(tone_rows(n)):
        sf.write(tmp_path / f"c{i}.wav", row.audio, 16000)
    manifest = tmp_path / "train.jsonl"
    manifest.write_text(
        "".join(json.dumps({"id": f"c{i}", "audio": f"c{i}.wav", "prompt": "Tempo?"}) + "\n" for i in range(n))
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return manifest, env


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, tiny_checkpoint):
    manifest, env = toy_project(tmp_path, 5)

    def cmd(name):
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(
            RESUME_YAML.format(out=tmp_path / name, model=tiny_checkpoint("audio_flamingo3"), manifest=manifest)
        )
        return [sys.executable, "-m", "grpo_audio.cli", "train", str(cfg)]

    subprocess.run(cmd("straight"), check=True, env=env, cwd=REPO, capture_output=True)

    # The save of step 4 pauses once every file is written, before the rename: the kill lands exactly there.
    paused = tmp_path / "paused"
    pause = {**env, PAUSE_ENV: f"4:{paused}"}
    proc = subprocess.Popen(cmd("killed"), env=pause, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not paused.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert paused.exists(), "the run never reached the save of step 4"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # killed, not finished
    half = Path(paused.read_text())
    assert half.name.startswith(".tmp-step-000004-") and (half / "COMPLETE").exists()  # all written, not renamed
    checkpoints = tmp_path / "killed/checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step-*")) == ["step-000002"]
    subprocess.run(cmd("killed"), check=True, env=env, cwd=REPO, capture_output=True)
    assert not half.exists()  # the next save cleared the half-written folder

    a = saved_state(tmp_path / "straight/checkpoints/step-000006")["model"]
    b = saved_state(tmp_path / "killed/checkpoints/step-000006")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (tmp_path / "killed/metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # no duplicated or lost lines after the resume
    from grpo_audio.models import get_family

    initial = get_family("audio_flamingo3").model_class().from_pretrained(tiny_checkpoint("audio_flamingo3"))
    assert not torch.equal(initial.state_dict()["lm_head.weight"], a["lm_head.weight"])  # training moved it


def test_train_cli_rejects_bad_config(tmp_path, capsys):
    from grpo_audio.cli import main
    from grpo_audio.config import ConfigError

    bad = tmp_path / "bad.yaml"
    bad.write_text("output_dir: x\nmodel: {path: p, family: audio_flamingo3}\ngrpo: {num_generatons: 4}\n")
    with pytest.raises(ConfigError, match="grpo.num_generatons.*Did you mean 'num_generations'"):
        main(["train", str(bad)])


def test_shared_prefix_and_per_sample_steps_agree(tmp_path, tiny_checkpoint):
    """One step from the same start and seed: the same loss and gradients whichever logprob path computes them.

    (Adam's first moment after one step is (1 - beta1) * gradient; the weights themselves are not compared,
    since Adam turns float noise in near-zero gradients into full-size steps.)"""
    moments, losses = [], []
    for shared in (True, False):
        cfg = config(
            tmp_path / str(shared),
            tiny_checkpoint("music_flamingo"),
            family="music_flamingo",
            **{"train.max_steps": 1, "grpo.shared_prefix": shared, "grpo.beta": 0.05, "train.micro_batch_size": 8},
        )
        trainer = GRPOTrainer(cfg, reward_funcs=RewardSet([digits]), train_rows=tone_rows(4))
        m = trainer.train_step()
        assert (trainer.logprob_path == "shared_prefix") is shared and m["kl"] >= 0
        losses.append(m["loss"])
        moments.append(
            {
                n: trainer.optimizer.state[p]["exp_avg"].clone()
                for n, p in trainer.policy.named_parameters()
                if p in trainer.optimizer.state
            }
        )
    assert abs(losses[0] - losses[1]) <= 1e-5 * max(1.0, abs(losses[1]))
    a, b = moments
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        assert (a[name] - b[name]).norm() <= 1e-4 * b[name].norm().clamp(min=1e-12), name


@pytest.mark.slow
def test_two_processes_with_ddp(tmp_path, tiny_checkpoint):
    """DDP on the CPU (gloo, torchrun): two processes, each with its own prompts and engine, one set of outputs."""
    manifest, env = toy_project(tmp_path, 6)
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(
        RESUME_YAML.format(out=tmp_path / "ddp", model=tiny_checkpoint("audio_flamingo3"), manifest=manifest).replace(
            "max_steps: 6, prompts_per_step: 2", "max_steps: 3, prompts_per_step: 4"
        )
    )
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "-m", "grpo_audio.cli", "train", str(cfg)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [json.loads(x)["step"] for x in (tmp_path / "ddp/metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # written once, by the main process
    ckpt = latest_checkpoint(tmp_path / "ddp/checkpoints")
    state = json.loads((ckpt / "trainer_state.json").read_text())
    # 3 steps x 4 prompts (2 a process) = 12 rows of a 6-row set: each process took its own prompts
    assert ckpt.name == "step-000003" and (state["epoch"], state["cursor"]) == (1, 6)
    from grpo_audio.models import get_family

    get_family("audio_flamingo3").model_class().from_pretrained(ckpt / "model")


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_logged_loss_and_gradients_do_not_depend_on_the_micro_batch(tmp_path, tiny_checkpoint, loss_type):
    """The same step (same rollouts) at micro-batch n and n/4: equal logged loss and equal gradients, with one and
    two iterations per batch. The logged loss is the batch loss, checked by hand: the sum of the micro-batch losses
    (each normalised to the whole batch), averaged over the iterations. (The policy term of a batch loss is ~0 at
    its first iteration, advantages being centred per group, so a KL term to a reference moved off the policy
    makes the loss large enough to tell a rescaled one from it.)"""
    for iterations in (1, 2):
        losses, grads, by_hand = [], [], []
        for mb in (8, 2):
            cfg = config(
                tmp_path / f"{iterations}-{mb}",
                tiny_checkpoint("audio_flamingo3"),
                **{"grpo.loss_type": loss_type, "grpo.num_generations": 4, "train.prompts_per_step": 2,
                   "train.micro_batch_size": mb, "grpo.num_iterations": iterations, "train.lr": 1e-7,
                   "grpo.shared_prefix": False, "grpo.beta": 0.5},
            )  # fmt: skip
            trainer = GRPOTrainer(cfg, reward_funcs=RewardSet([digits]), train_rows=tone_rows(2))
            with torch.no_grad():
                generator = torch.Generator().manual_seed(0)
                for p in trainer.ref_model.parameters():
                    p.add_(0.05 * torch.randn(p.shape, generator=generator))
            seen: list[float] = []

            def recording(*args, _seen=seen, **kwargs):
                out = policy_loss(*args, **kwargs)
                _seen.append(out[0].item())
                return out

            with pytest.MonkeyPatch.context() as mp:
                mp.setattr("grpo_audio.passes.policy_loss", recording)
                m = trainer.train_step()
            assert len(seen) == iterations * (8 // mb)
            per_iteration = [sum(seen[i * (8 // mb) : (i + 1) * (8 // mb)]) for i in range(iterations)]
            by_hand.append(sum(per_iteration) / iterations)
            losses.append(m["loss"])
            grads.append({n: p.grad.clone() for n, p in trainer.policy.named_parameters() if p.grad is not None})
        assert losses[0] == pytest.approx(by_hand[0], abs=1e-7) and losses[1] == pytest.approx(by_hand[1], abs=1e-7)
        assert abs(losses[0] - losses[1]) <= 1e-6 * max(1.0, abs(losses[0])), (iterations, losses)
        assert abs(losses[0]) > 1e-4  # the premise: a loss the old scaling (x len(idx) / n) would have changed
        a, b = grads
        assert a.keys() == b.keys() and len(a) > 10
        for name in a:
            assert (a[name] - b[name]).abs().max() <= 1e-6 * max(1.0, b[name].abs().max().item()), (iterations, name)


@pytest.mark.parametrize("sampling", [{}, {"rollout.top_k": 5}, {"rollout.top_p": 0.5}, {"rollout.top_k": 20,
                                      "rollout.top_p": 0.9, "rollout.temperature": 0.7}])  # fmt: skip
def test_importance_ratio_is_one_under_top_k_and_top_p(tmp_path, tiny_checkpoint, sampling, caplog):
    """The transformers engine reports the logprobs of the distribution it sampled from (after temperature,
    top-k, top-p); the trainer scores the same weights under the same filtering, so the IS ratio is 1 (float
    noise) whatever the settings. Scoring the full vocabulary would make it the kept mass (0.01-0.5 here)."""
    cfg = config(
        tmp_path,
        tiny_checkpoint("audio_flamingo3"),
        **{"grpo.num_generations": 4, "train.prompts_per_step": 2, "train.lr": 1e-7, **sampling},
    )
    trainer = GRPOTrainer(cfg, reward_funcs=RewardSet([digits]), train_rows=tone_rows(2))
    with caplog.at_level("WARNING", logger="grpo_audio.trainer"):
        m = trainer.train_step()
    assert abs(m["is_ratio_mean"] - 1) < 1e-3 and m["is_ratio_min"] > 0.99 and m["is_ratio_max"] < 1.01, m
    assert "importance-sampling ratio" not in caplog.text

    trainer.cfg.grpo.is_ratio_band = [1.5, 2.0]  # a band the ratio is outside of: the step warns
    with caplog.at_level("WARNING", logger="grpo_audio.trainer"):
        trainer.train_step()
    assert "step 2: mean importance-sampling ratio 1.000" in caplog.text


def test_sampling_filter_matches_transformers_warpers():
    """The trainer's top-k / top-p keep exactly the tokens transformers' sampler keeps (an independent
    implementation), on random logits."""
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    from grpo_audio.logprobs import sampling_filter

    torch.manual_seed(0)
    logits = torch.randn(6, 50) * 3
    for top_k, top_p in ((5, 1.0), (-1, 0.5), (10, 0.8), (50, 0.95)):
        expected = logits.clone()
        if 0 < top_k < 50:
            expected = TopKLogitsWarper(top_k)(None, expected)
        if top_p < 1:
            expected = TopPLogitsWarper(top_p)(None, expected)
        kept = torch.isfinite(expected)
        ids = kept.float().argmax(-1)  # a kept token as the "sampled" one
        assert torch.equal(torch.isfinite(sampling_filter(logits, ids, top_k, top_p)), kept), (top_k, top_p)
    outside = (~kept).float().argmax(-1)  # a token the filter would drop is kept when it was the one sampled
    assert torch.isfinite(sampling_filter(logits, outside, 10, 0.8).gather(-1, outside[:, None])).all()


def test_non_finite_update_is_skipped_then_stops_the_run(tmp_path, tiny_checkpoint):
    """NaN logits in the update (a forward hook active only with gradients on, so rollouts are untouched): the
    step is skipped: weights and optimiser state unchanged, the engine not synced, no checkpoint, counted in the
    metrics; train.max_skipped_steps in a row stop the run with an error naming the step and the cause."""
    cfg = config(
        tmp_path,
        tiny_checkpoint("audio_flamingo3"),
        **{"grpo.num_generations": 4, "train.prompts_per_step": 2, "train.max_steps": 5, "train.save_every": 1,
           "train.max_skipped_steps": 3},
    )  # fmt: skip
    trainer = GRPOTrainer(cfg, reward_funcs=RewardSet([digits]), train_rows=tone_rows(2))
    synced = []
    sync = trainer.engine.sync_weights
    trainer.engine.sync_weights = lambda policy: (synced.append(trainer.step), sync(policy))
    trainer.train_step()  # a normal step first, so that the optimiser has state to keep
    assert synced == [0] and trainer.optimizer.state
    weights = {n: p.detach().clone() for n, p in trainer.policy.named_parameters()}
    state = {k: v.clone() for s in trainer.optimizer.state.values() for k, v in s.items() if torch.is_tensor(v)}

    def nan_when_training(module, args, output):
        return output * float("nan") if torch.is_grad_enabled() else output

    hook = trainer.policy.lm_head.register_forward_hook(nan_when_training)
    m = trainer.train_step()
    assert m["skipped"] == 1.0 and m["skipped_steps"] == 1.0 and synced == [0]
    assert all(torch.equal(p, weights[n]) for n, p in trainer.policy.named_parameters())
    after = {k: v for s in trainer.optimizer.state.values() for k, v in s.items() if torch.is_tensor(v)}
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)

    with pytest.raises(FloatingPointError, match=r"step 4: loss nan .*not finite; 3 steps in a row skipped"):
        trainer.train()  # step 3 skipped and not saved, step 4 the third in a row: stop
    checkpoints = tmp_path / "run" / "checkpoints"
    assert not checkpoints.exists() or not any(checkpoints.iterdir())  # save_every=1, yet no step was saved
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("skipped")] == [3, 4]  # the failing step is logged too
    hook.remove()
    assert trainer.train_step()["skipped"] == 0.0 and synced == [0, 4]


def test_rotation_and_resume_see_only_the_runs_own_checkpoints(tmp_path):
    """An older run left step-2 and step-3: a new run's step-1 is kept (not pruned as the oldest), and the newest
    checkpoint of each run is its own."""
    root = tmp_path / "checkpoints"
    old, new = new_lineage("base-a", "cfg"), new_lineage("base-b", "cfg")
    for step in (2, 3):
        save_checkpoint(root, step, write_model, {"w": torch.ones(2)}, Opt(), {"step": step}, 2, lineage=old)
    save_checkpoint(root, 1, write_model, {"w": torch.zeros(2)}, Opt(), {"step": 1}, 2, lineage=new)
    assert sorted(p.name for p in root.iterdir()) == ["step-000001", "step-000002", "step-000003"]
    assert latest_checkpoint(root, new.run_id).name == "step-000001"
    assert latest_checkpoint(root, old.run_id).name == "step-000003"


def test_a_new_run_in_another_runs_folder_is_refused_unless_overwrite(tmp_path, tiny_checkpoint):
    model = tiny_checkpoint("audio_flamingo3")
    first = config(tmp_path, model, **{"train.max_steps": 1, "train.resume": "auto", "grpo.num_generations": 4})
    trainer = GRPOTrainer(first, reward_funcs=RewardSet([digits]), train_rows=tone_rows(2))
    trainer.train()
    run_id = trainer.lineage.run_id
    # The same run again continues (nothing left to do: step 1 of 1).
    again = GRPOTrainer(first, reward_funcs=RewardSet([digits]), train_rows=tone_rows(2))
    assert again.step == 1 and again.lineage.run_id == run_id
    # Another config, or resume: never, is another run: refused, naming the checkpoints and why.
    other = config(tmp_path, model, **{"train.max_steps": 1, "train.resume": "auto", "train.lr": 1e-4,
                                       "grpo.num_generations": 4})  # fmt: skip
    with pytest.raises(CheckpointError, match=r"holds checkpoints of another run \(step-000001; its config differs\)"):
        GRPOTrainer(other, reward_funcs=RewardSet([digits]), train_rows=tone_rows(2))
    fresh = config(tmp_path, model, **{"train.max_steps": 1, "grpo.num_generations": 4})  # resume: never
    with pytest.raises(CheckpointError, match="resume is 'never'"):
        GRPOTrainer(fresh, reward_funcs=RewardSet([digits]), train_rows=tone_rows(2))
    other.train.overwrite = True
    replaced = GRPOTrainer(other, reward_funcs=RewardSet([digits]), train_rows=tone_rows(2))
    assert replaced.step == 0 and replaced.lineage.run_id != run_id
    assert not (tmp_path / "run" / "checkpoints" / "step-000001").exists()


def test_a_failed_checkpoint_write_is_clear_and_keeps_what_was_written(tmp_path, tiny_checkpoint, monkeypatch):
    """A full disk at the second save: a clear error naming the cause and the checkpoint kept; the first checkpoint
    and every metrics line stay intact, and no half-written folder is left."""
    import errno

    cfg = config(tmp_path, tiny_checkpoint("audio_flamingo3"),
                 **{"train.max_steps": 2, "train.save_every": 1, "grpo.num_generations": 4})  # fmt: skip
    trainer = GRPOTrainer(cfg, reward_funcs=RewardSet([digits]), train_rows=tone_rows(2))
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if "step-000002" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr("grpo_audio.checkpoint.torch.save", full_disk)
    with pytest.raises(CheckpointError, match=r"step 2 .*No space left on device; the previous checkpoint "
                                              r"step-000001 is intact"):  # fmt: skip
        trainer.train()
    root = tmp_path / "run" / "checkpoints"
    assert [p.name for p in root.iterdir()] == ["step-000001"] and (root / "step-000001" / "COMPLETE").exists()
    assert load_checkpoint(root / "step-000001")["trainer_state"]["step"] == 1
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def test_lineage_that_cannot_be_read_is_not_silently_retrained_over(tmp_path, tiny_checkpoint):
    settings = {"train.max_steps": 2, "train.save_every": 1, "train.resume": "auto", "grpo.num_generations": 4}
    cfg = config(tmp_path, tiny_checkpoint("audio_flamingo3"), **settings)
    GRPOTrainer(cfg, reward_funcs=RewardSet([digits]), train_rows=tone_rows(2)).train()
    root = tmp_path / "run" / "checkpoints"
    (root / "step-000002" / "lineage.json").unlink()
    cfg.train.max_steps = 3
    with pytest.raises(CheckpointError, match=r"whose lineage.json cannot be read: step-000002"):
        GRPOTrainer(cfg, reward_funcs=RewardSet([digits]), train_rows=tone_rows(2))
    cfg.train.overwrite = True  # removes the unreadable one and continues from the run's own step 1
    assert GRPOTrainer(cfg, reward_funcs=RewardSet([digits]), train_rows=tone_rows(2)).step == 1
    assert not (root / "step-000002").exists()


def test_a_skipped_last_step_still_saves_the_updates_before_it(tmp_path, tiny_checkpoint):
    cfg = config(tmp_path, tiny_checkpoint("audio_flamingo3"), **{"train.max_steps": 2, "grpo.num_generations": 4})
    trainer = GRPOTrainer(cfg, reward_funcs=RewardSet([digits]), train_rows=tone_rows(2))
    trainer.train_step()  # step 1 applied, not saved (save_every 0: only at the end)
    weights = {n: p.detach().clone() for n, p in trainer.policy.named_parameters()}
    trainer.policy.lm_head.register_forward_hook(
        lambda module, args, output: output * float("nan") if torch.is_grad_enabled() else output
    )
    trainer.train()  # step 2 skipped: the run ends with step 1's weights saved
    saved = saved_state(tmp_path / "run" / "checkpoints" / "step-000002")["model"]
    assert all(torch.equal(saved[n], weights[n]) for n in weights if n in saved)


def test_a_new_run_starts_its_logs_afresh_and_a_resumed_one_keeps_its_own(tmp_path, tiny_checkpoint):
    model = tiny_checkpoint("audio_flamingo3")
    cfg = config(tmp_path, model, **{"train.max_steps": 2, "train.save_every": 1, "train.resume": "auto",
                                     "train.eval_every": 1, "grpo.num_generations": 4})  # fmt: skip
    GRPOTrainer(cfg, reward_funcs=RewardSet([digits]), train_rows=tone_rows(2), eval_rows=tone_rows(1, "e")).train()
    run = tmp_path / "run"
    (run / "tb" / "stale-event").write_text("x")
    first = [json.loads(x)["step"] for x in (run / "samples.jsonl").read_text().splitlines()]
    assert sorted(set(first)) == [0, 1, 2]
    cfg.train.max_steps = 3  # the same run, extended: its samples up to step 2 stay, step 3's are added
    GRPOTrainer(cfg, reward_funcs=RewardSet([digits]), train_rows=tone_rows(2), eval_rows=tone_rows(1, "e")).train()
    second = [json.loads(x)["step"] for x in (run / "samples.jsonl").read_text().splitlines()]
    assert second == first + [3] * second.count(3) and second.count(3) > 0
    other = config(tmp_path, model, **{"train.max_steps": 1, "train.overwrite": True, "train.lr": 1e-4,
                                       "train.eval_every": 1, "grpo.num_generations": 4})  # fmt: skip
    GRPOTrainer(other, reward_funcs=RewardSet([digits]), train_rows=tone_rows(2), eval_rows=tone_rows(1, "e")).train()
    third = [json.loads(x)["step"] for x in (run / "samples.jsonl").read_text().splitlines()]
    assert sorted(set(third)) == [0, 1] and not (run / "tb" / "stale-event").exists()


def test_resume_path_errors_come_before_anything_is_written(tmp_path, tiny_checkpoint):
    model = tiny_checkpoint("audio_flamingo3")
    first = config(tmp_path / "a", model, **{"train.max_steps": 1, "grpo.num_generations": 4})
    GRPOTrainer(first, reward_funcs=RewardSet([digits]), train_rows=tone_rows(2)).train()
    step = tmp_path / "a" / "run" / "checkpoints" / "step-000001"
    for bad, message in ((step.parent, "not a complete checkpoint folder"), (tmp_path / "nope", "not a complete")):
        cfg = config(tmp_path / "b", model, **{"train.max_steps": 1, "train.resume": str(bad)})
        with pytest.raises(CheckpointError, match=message):
            GRPOTrainer(cfg, reward_funcs=RewardSet([digits]), train_rows=tone_rows(2))
        assert not (tmp_path / "b" / "run" / "run.json").exists()
    # a finished run's checkpoint, resumed into a new folder at its last step: nothing to do, no crash
    done = config(
        tmp_path / "c", model, **{"train.max_steps": 1, "train.resume": str(step), "grpo.num_generations": 4}
    )
    trainer = GRPOTrainer(done, reward_funcs=RewardSet([digits]), train_rows=tone_rows(2))
    assert trainer.step == 1 and trainer.train().last == {}


def test_the_audio_cache_changes_no_update(tmp_path, tiny_checkpoint, monkeypatch):
    """With the encoder frozen, each clip's features and encoder outputs come from the cache in every pass
    (rollout, old policy, reference, update); the weights after two steps are those of a run that computes
    everything each time."""
    import contextlib

    from grpo_audio.audio_cache import AudioCache
    from grpo_audio.models import get_family

    family = get_family("audio_flamingo3")
    checkpoint = tiny_checkpoint("audio_flamingo3")
    encoder_class = type(family.audio_encoder(family.model_class().from_pretrained(checkpoint)))
    encode, encoded = encoder_class.forward, []

    def counting_encode(self, input_features, *args, **kwargs):
        encoded.append(input_features.shape[0])
        return encode(self, input_features, *args, **kwargs)

    monkeypatch.setattr(encoder_class, "forward", counting_encode)
    settings = {"train.max_steps": 2, "model.freeze_audio_encoder": True, "grpo.num_iterations": 2, "grpo.beta": 0.04}

    def run(name):
        encoded.clear()
        cfg = config(tmp_path / name, checkpoint, **settings)
        trainer = GRPOTrainer(cfg, reward_funcs=RewardSet([digits]), train_rows=tone_rows(3))
        trainer.train()
        trainer.close()
        return {n: p.detach().clone() for n, p in trainer.policy.named_parameters()}, sum(encoded)

    cached, windows = run("cached")
    with monkeypatch.context() as m:  # the reference: nothing kept
        m.setattr(AudioCache, "features", lambda self, processor: processor)
        m.setattr(AudioCache, "encoder", lambda self, model, family: contextlib.nullcontext())
        plain, plain_windows = run("plain")
    assert windows == 3 and plain_windows > 3 * windows  # each of the 3 clips encoded once, not in every pass
    base = dict(family.model_class().from_pretrained(checkpoint).named_parameters())
    assert any(not torch.equal(plain[n], base[n]) for n in plain)  # the steps changed the weights
    changed = [n for n in plain if not torch.equal(plain[n], cached[n])]
    for name in changed:
        torch.testing.assert_close(cached[name], plain[name], rtol=0, atol=1e-6, msg=name)


def _replay_config(tmp_path, checkpoint, corpus, **overrides):
    return config(
        tmp_path,
        checkpoint,
        family="music_flamingo",
        **{"data.replay": f"{corpus['think']},{corpus['skills']}", "grpo.replay_coef": 0.5, "grpo.replay_rows": 3,
           "train.prompts_per_step": 2, "grpo.num_generations": 2, "train.max_steps": 1,
           "train.max_grad_norm": 1e9, **overrides},
    )  # fmt: skip


def test_replayed_rows_add_their_supervised_gradient_as_transformers_computes_it(tmp_path, tiny_checkpoint):
    """With every advantage 0 (a constant reward) and no clipping, a step's gradient is replay_coef x the gradient
    of the replayed targets' mean token negative log-likelihood, computed independently: the SFT collator's batch
    (labels on the target only), the model's logits with the engines' banned ids excluded, torch's cross entropy."""
    import copy

    from transformers import AutoProcessor

    from grpo_audio.data.synthetic import write_corpus
    from grpo_audio.models import get_family
    from grpo_audio.replay import replay_indices
    from grpo_audio.rollout.base import banned_token_ids
    from grpo_audio.sft import AudioSFTCollator

    corpus = write_corpus(tmp_path / "corpus", n=4, seed=3)
    checkpoint = tiny_checkpoint("music_flamingo")
    cfg = _replay_config(tmp_path, checkpoint, corpus)
    constant = RewardSet([lambda prompts, completions, **columns: [1.0] * len(completions)])
    trainer = GRPOTrainer(cfg, reward_funcs=constant, train_rows=tone_rows(2))
    before = copy.deepcopy(trainer.policy)
    m = trainer.train_step()
    rows = [trainer.replay_rows[i] for i in replay_indices(len(trainer.replay_rows), 0, 3, cfg.seed)]
    assert {r.id for r in rows} <= {r.id for r in trainer.replay_rows} and len({r.id for r in rows}) == 3

    family = get_family("music_flamingo")
    processor = AutoProcessor.from_pretrained(checkpoint)
    batch = AudioSFTCollator(family, processor, rows, "auto")([{"index": i} for i in range(len(rows))])
    labels = batch.pop("labels")
    logits = before(**batch).logits[:, :-1].float()
    logits[..., banned_token_ids(family, processor.tokenizer)] = float("-inf")
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels[:, 1:], ignore_index=-100)
    (0.5 * nll).backward()
    assert m["replay/nll"] == pytest.approx(nll.item(), rel=1e-5)
    assert m["advantages/abs_mean"] == 0.0  # the premise: the policy loss adds no gradient
    grads = {n: p.grad for n, p in trainer.policy.named_parameters() if p.grad is not None}
    expected = {n: p.grad for n, p in before.named_parameters() if p.grad is not None}
    assert grads.keys() == expected.keys() and len(grads) > 10
    for name, g in grads.items():
        assert torch.allclose(g, expected[name], rtol=1e-4, atol=1e-7), name
    assert max(g.abs().max().item() for g in grads.values()) > 1e-3  # a gradient a missing term would not match


def test_replay_settings_and_rows_are_checked_before_a_step_runs(tmp_path, tiny_checkpoint):
    import re

    from grpo_audio.config import ConfigError, check_parallel
    from grpo_audio.data.synthetic import write_corpus
    from grpo_audio.models import get_family
    from grpo_audio.replay import replay_indices

    corpus = write_corpus(tmp_path / "corpus", n=4, seed=3)
    checkpoint = tiny_checkpoint("music_flamingo")
    for empty in ("''", "' , '"):
        with pytest.raises(ConfigError, match="grpo.replay_coef=0.5: data.replay names no manifest"):
            check_parallel(_replay_config(tmp_path, checkpoint, corpus, **{"data.replay": empty}))
    with pytest.raises(ConfigError, match="data.replay=.*grpo.replay_coef is 0"):
        check_parallel(_replay_config(tmp_path, checkpoint, corpus, **{"grpo.replay_coef": 0.0}))
    with pytest.raises(ConfigError, match="grpo.replay_rows=3 does not split over 2 processes"):
        check_parallel(_replay_config(tmp_path, checkpoint, corpus, **{"train.prompts_per_step": 2}), world_size=2)
    rows = [json.loads(line) for line in corpus["skills"].read_text().splitlines()]
    answer = rows[1].pop("answer")
    broken = tmp_path / "broken.jsonl"
    broken.write_text("".join(json.dumps({**r, "audio": str(corpus["skills"].parent / r["audio"])}) + "\n"
                              for r in rows))  # fmt: skip
    cfg = _replay_config(tmp_path, checkpoint, corpus, **{"data.replay": str(broken)})
    with pytest.raises(ValueError, match=f"row '{rows[1]['id']}'.*answer"):
        GRPOTrainer(cfg, reward_funcs=RewardSet([digits]), train_rows=tone_rows(2))
    # A target with an audio placeholder written out: its logprob would be -inf and every step skipped.
    placeholder = get_family("music_flamingo").audio_special_tokens[0]
    rows[1]["answer"] = answer
    k = next(i for i, r in enumerate(rows) if not r.get("choices"))  # an open question: any answer is valid
    rows[k]["answer"] = f"{placeholder} 120"
    broken.write_text("".join(json.dumps({**r, "audio": str(corpus["skills"].parent / r["audio"])}) + "\n"
                              for r in rows))  # fmt: skip
    placed = f"row '{rows[k]['id']}': field 'answer': the replayed target holds '{re.escape(placeholder)}'"
    with pytest.raises(ValueError, match=placed):
        GRPOTrainer(cfg, reward_funcs=RewardSet([digits]), train_rows=tone_rows(2))
    # data.bad_rows: skip drops the bad replay rows, as it drops bad training rows, and keeps the others in order.
    skip = _replay_config(tmp_path, checkpoint, corpus, **{"data.replay": str(broken), "data.bad_rows": "skip"})
    trainer = GRPOTrainer(skip, reward_funcs=RewardSet([digits]), train_rows=tone_rows(2))
    assert [r.id for r in trainer.replay_rows] == [r["id"] for i, r in enumerate(rows) if i != k]
    trainer.close()
    # A resumed run replays what an uninterrupted one would: the rows depend on the seed and the step only.
    assert replay_indices(10, 4, 3, 0) == replay_indices(10, 4, 3, 0) != replay_indices(10, 4, 3, 1)
