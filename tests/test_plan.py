"""The memory plan: exact parameter counts, the strategies' arithmetic, the command, and the plan checked against
the measured peak of the bench-size model on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from grpo_audio.cli import main
from grpo_audio.config import ConfigError, RecipeConfig, load_config
from grpo_audio.models import get_family
from grpo_audio.plan import GB, model_shape, plan_memory
from tests.plan_probe import ALLOCATOR
from tests.test_trainer import REPO

FULL = REPO / "examples/music_flamingo/full.yaml"


def test_parameters_are_counted_exactly(tiny_checkpoint):
    """On a local checkpoint the counts are the loaded model's; on a known checkpoint the published size."""
    path = tiny_checkpoint("audio_flamingo3")
    cfg = load_config(None, ["output_dir=x", f"model.path={path}", "model.family=audio_flamingo3",
                             "model.freeze_audio_encoder=true"])  # fmt: skip
    shape = model_shape(cfg)
    family = get_family("audio_flamingo3")
    model = family.model_class().from_pretrained(path)
    encoder = sum(p.numel() for p in family.audio_encoder(model).parameters())
    assert shape.params == sum(p.numel() for p in model.parameters())
    assert shape.trainable == shape.params - encoder > 0
    big = model_shape(load_config(FULL, schema=RecipeConfig))
    assert 8.2e9 < big.params < 8.4e9  # Music Flamingo: a Qwen2.5-7B language model and a Whisper-large encoder
    assert big.text == {"hidden": 3584, "intermediate": 18944, "layers": 28, "heads": 28, "kv_heads": 4,
                        "vocab": 152064}  # fmt: skip


def test_strategies_split_what_they_should():
    cfg = load_config(FULL, ["grpo.beta=0.04"], schema=RecipeConfig)
    shape = model_shape(cfg)
    ddp, fsdp2, offload = plan_memory(cfg, 8, 80)
    assert ddp.weights == shape.params * 2 and ddp.optimizer == 2 * shape.trainable * 2  # bf16
    assert ddp.gradients == 2 * shape.trainable * 2  # and DDP's buckets
    assert fsdp2.optimizer == ddp.optimizer / 8 and fsdp2.reference == ddp.reference / 8 > 0
    # A shard, plus the root unit and two units (the largest: the 152k x 3584 embedding) whole for compute.
    assert fsdp2.weights == shape.params * 2 / 8 + (shape.root + 2 * 152064 * 3584) * 2
    assert plan_memory(cfg, 16, 80)[1].weights < fsdp2.weights
    assert offload.optimizer == 0 and offload.total < fsdp2.total < ddp.total
    assert ddp.activations == fsdp2.activations and ddp.engine == 0.35 * 80 * GB
    single = plan_memory(cfg, 1, 80)[0]
    assert single.gradients == shape.trainable * 2  # one process: no DDP buckets


def test_plan_command_says_what_fits(capsys):
    assert main(["plan", str(FULL), "--gpus", "8", "--gpu-memory", "80"]) == 0
    out = capsys.readouterr().out
    assert "8.27 B parameters" in out
    cells = [line.split("|") for line in out.splitlines() if line.count("|") > 9][2:]  # below the header
    assert {c[1].strip(): c[-2].strip() for c in cells} == {"ddp": "no", "fsdp2": "yes", "fsdp2+offload": "yes"}
    with pytest.raises(ValueError, match="not a known checkpoint"):
        main(["plan", str(FULL), "model.path=someone/unknown", "--gpus", "1", "--gpu-memory", "80"])


@pytest.mark.parametrize("checkpointing", [True, False])
def test_plan_is_within_a_quarter_of_the_measured_peak(tmp_path, checkpointing):
    """The bench-size model, G = 8, 30 s of audio, 128-token completions, two training steps in one process: the
    plan's total (no engine) is within 25% of the measured peak, with and without activation checkpointing."""
    from grpo_audio.models.tiny import build_tiny_model

    model = build_tiny_model("music_flamingo", tmp_path / "bench", size="bench", seed=0)
    config = tmp_path / "run.yaml"
    config.write_text(
        f"output_dir: {tmp_path / 'out'}\nmodel: {{path: {model}, family: music_flamingo, "
        f"gradient_checkpointing: {str(checkpointing).lower()}}}\nrollout: {{engine: hf, max_new_tokens: 128}}\n"
        "grpo: {num_generations: 8}\ntrain: {micro_batch_size: 8}\n"
    )
    probe = subprocess.run(
        [sys.executable, str(REPO / "tests" / "plan_probe.py"), str(config), "30"],
        env={**os.environ, **ALLOCATOR},
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    measured = json.loads(probe.stdout.strip().splitlines()[-1])["peak_bytes"]
    planned = plan_memory(load_config(config), 1, 80)[0]
    assert planned.engine == 0 and planned.activations > 0
    assert 0.75 <= planned.total / measured <= 1.25, (planned, measured)


def test_the_readme_table_is_the_commands(capsys):
    assert main(["plan", str(FULL), "--gpus", "8", "--gpu-memory", "80"]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    readme = (REPO / "README.md").read_text()
    assert len(table) == 5 and all(f"\n{line}\n" in readme for line in table)


def test_plan_refuses_what_it_cannot_plan(tiny_checkpoint):
    with pytest.raises(ConfigError, match="--gpus must be at least 1"):
        main(["plan", str(FULL), "--gpus", "0", "--gpu-memory", "80"])
    with pytest.raises(ConfigError, match="--gpu-memory must be positive"):
        main(["plan", str(FULL), "--gpus", "1", "--gpu-memory", "-5"])
    with pytest.raises(ConfigError, match="is a audio_flamingo3 checkpoint, but model.family is music_flamingo"):
        main(
            [
                "plan",
                str(FULL),
                "--gpus",
                "1",
                "--gpu-memory",
                "80",
                f"model.path={tiny_checkpoint('audio_flamingo3')}",
            ]
        )
    with pytest.raises(ConfigError, match="builds its model"):
        main(["plan", str(REPO / "examples/music_flamingo/tiny.yaml"), "--gpus", "1", "--gpu-memory", "8"])


def test_what_the_transformers_engine_and_the_margin_add(capsys):
    """Under FSDP2 the transformers engine samples from a whole copy of the policy on every GPU; a plan fits only
    within 95% of the GPU."""
    cfg = load_config(FULL, ["rollout.engine=hf"], schema=RecipeConfig)
    shape = model_shape(cfg)
    ddp, fsdp2, _ = plan_memory(cfg, 8, 80)
    assert ddp.engine == 0 and fsdp2.engine == shape.params * 2
    total = fsdp2.total / GB
    main(["plan", str(FULL), "--gpus", "8", "--gpu-memory", str(total / 0.96), "rollout.engine=hf"])
    assert "| fsdp2 |" in (out := capsys.readouterr().out) and out.split("| fsdp2 |")[1].split("\n")[0].endswith(
        "| no |"
    )
    main(["plan", str(FULL), "--gpus", "8", "--gpu-memory", str(total / 0.94), "rollout.engine=hf"])
    assert capsys.readouterr().out.split("| fsdp2 |")[1].split("\n")[0].endswith("| yes |")
