"""Data parallelism on the CPU (gloo, torchrun): 2-process DDP and FSDP2 runs, a 2-node launch and a resume on
another process count, each compared after every step with one process taking the same global batch.

The runs use the transformers engine, whose per-prompt seeds make a prompt's completions independent of the batch
and process it lands in. The distributed runs take the shared-prefix logprob path, the one-process reference the
per-sample path. Parameters are compared to 1e-5; since Adam's update hardly depends on the gradient's
scale, AdamW's first moments (linear in the gradients) and the logged gradient norm are compared too, so that a
wrongly averaged or wrongly split gradient shows.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_dtype import assert_update_is_adamw_in_float64
from tests.test_trainer import REPO, toy_project

pytestmark = pytest.mark.slow

STEPS = 3
CONFIG = """
output_dir: {out}
seed: 5
model: {{path: {model}, family: audio_flamingo3}}
data: {{train: {manifest}}}
rollout: {{engine: hf, max_new_tokens: 6}}
grpo: {{num_generations: 4, loss_type: grpo, num_iterations: 2, beta: 0.04, shared_prefix: true}}
train: {{lr: 1.0e-5, max_steps: {steps}, prompts_per_step: 4, micro_batch_size: 4, warmup_ratio: 0.0,
         lr_scheduler: constant, resume: auto, save_every: 0}}
parallel: {{strategy: {strategy}}}
rewards: [{{name: "toy_rewards:digits"}}]
"""
WORKER = str(REPO / "tests" / "parallel_steps.py")
TORCHRUN = str(Path(sys.executable).parent / "torchrun")


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("parallel")
    manifest, env = toy_project(root, 6)
    return root, manifest, env, tiny_checkpoint("audio_flamingo3")


def run(project, name, launcher, strategy, steps=STEPS, extra=(), dumps_name=None):
    """One run of ``parallel_steps.py`` (4 prompts a step over all processes) into ``output_dir`` ``name``;
    returns its folder of per-rank, per-step dumps."""
    root, manifest, env, model = project
    cfg = root / f"{name}.yaml"
    cfg.write_text(CONFIG.format(out=root / name, model=model, manifest=manifest, steps=steps, strategy=strategy))
    dumps = root / f"{dumps_name or name}-steps"
    out = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    procs = [subprocess.Popen([*c, WORKER, str(cfg), str(dumps), *extra], env=env, cwd=REPO, **out) for c in launcher]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-4000:]
    return dumps


def setup(dumps: Path, rank: int = 0) -> dict:
    return json.loads((dumps / f"rank{rank}" / "setup.json").read_text())


def load(dumps: Path, rank: int, step: int) -> dict:
    return torch.load(dumps / f"rank{rank}" / f"step{step}.pt", weights_only=False)


def assert_same_step(a: dict, b: dict) -> None:
    """Two runs' views of one step agree: parameters to 1e-5, first moments (1e-4 relative); rewards, their
    statistics, advantages and lengths exactly (the same completions were sampled, and every logged statistic is
    over all processes); loss statistics and the gradient norm to 1e-4 relative."""
    assert a["params"].keys() == b["params"].keys() and len(a["params"]) > 10
    for name, p in a["params"].items():
        assert (p - b["params"][name]).abs().max() <= 1e-5, name
    assert (
        a["moments"].keys() == b["moments"].keys()
        and 0 < len(a["moments"])
        and a["moments"].keys() <= a["params"].keys()
    )
    for name, m in a["moments"].items():
        assert (m - b["moments"][name]).norm() <= 1e-4 * b["moments"][name].norm().clamp(min=1e-12), name
    ma, mb = a["metrics"], b["metrics"]
    logged = {k for k in mb if not k.startswith(("time/", "tokens_per_s/"))}
    assert logged <= set(ma) and {"reward/mean", "rewards/digits/std", "kl", "completions/mean_length"} <= logged
    for key in sorted(logged):
        exact = key.startswith(("reward", "advantages/", "completions/", "frac_zero"))
        tolerance = 1e-6 if exact else 1e-4 * max(abs(mb[key]), 1e-3)
        assert abs(ma[key] - mb[key]) <= tolerance, (key, ma[key], mb[key])


@pytest.fixture(scope="module")
def single(project):
    """One process taking the whole batch, on the per-sample logprob path (the reference the shared path is
    checked against)."""
    return run(project, "single", [[sys.executable]], "none", extra=["grpo.shared_prefix=false"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_equals_one_process(project, single):
    dumps = run(project, "ddp", [[TORCHRUN, "--nproc_per_node", "2"]], "ddp")
    assert setup(dumps).items() >= {"world_size": 2, "wrapper": "DistributedDataParallel", "sharded": False,
                                    "logprob_path": "shared_prefix", "layers": setup(single)["layers"],
                                    "checkpointed_layers": 0}.items()  # fmt: skip
    assert setup(single)["world_size"] == 1 and setup(single)["logprob_path"] == "per_sample"
    moved = 0.0
    for step in range(1, STEPS + 1):
        ref = load(single, 0, step)
        for rank in (0, 1):
            assert_same_step(load(dumps, rank, step), ref)
        moved = max(moved, max((p - load(single, 0, 1)["params"][n]).abs().max() for n, p in ref["params"].items()))
    assert moved > 1e-5  # premise: the steps moved the weights by more than the tolerance


def test_two_process_fsdp2_with_activation_checkpointing_equals_one_process(project, single):
    dumps = run(
        project,
        "fsdp2",
        [[TORCHRUN, "--nproc_per_node", "2"]],
        "fsdp2",
        extra=["model.gradient_checkpointing=true", "save_at=2"],
    )
    run_setup = setup(dumps)
    assert run_setup["sharded"] and run_setup["world_size"] == 2 and run_setup["logprob_path"] == "shared_prefix"
    assert run_setup["checkpointed_layers"] == run_setup["layers"] >= 2  # every decoder layer and encoder block
    for step in range(1, STEPS + 1):
        for rank in (0, 1):
            assert_same_step(load(dumps, rank, step), load(single, 0, step))
    # The sharded checkpoint of step 2 resumes on one process and continues as the two-process run did.
    root = project[0]
    resumed = run(project, "fsdp2", [[sys.executable]], "fsdp2", extra=["model.gradient_checkpointing=true"],
                  dumps_name="resumed")  # fmt: skip
    assert sorted(p.name for p in (resumed / "rank0").glob("step*.pt")) == [f"step{STEPS}.pt"]  # from step 2 on
    assert (root / "fsdp2" / "checkpoints" / "step-000002" / "state").is_dir()
    assert_same_step(load(resumed, 0, STEPS), load(dumps, 0, STEPS))


def nodes() -> list[list[str]]:
    """Two one-process "nodes" meeting through torchrun's c10d rendezvous on 127.0.0.1."""
    port = free_port()
    node = [TORCHRUN, "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
            "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", f"two-nodes-{port}"]  # fmt: skip
    return [node, node]


def assert_bitwise(a: dict, b: dict) -> None:
    """Two runs' views of one step are the same to the bit: parameters, first moments and logged metrics (but
    the timings)."""
    assert a["params"].keys() == b["params"].keys() and a["moments"].keys() == b["moments"].keys()
    assert all(torch.equal(p, b["params"][n]) for n, p in a["params"].items())
    assert all(torch.equal(m, b["moments"][n]) for n, m in a["moments"].items())
    timing = ("time/", "tokens_per_s/")
    timeless = [{k: v for k, v in d["metrics"].items() if not k.startswith(timing)} for d in (a, b)]
    assert timeless[0] == timeless[1] and "loss" in timeless[0]


def test_two_nodes_through_the_rendezvous_train_as_one_process_and_resume(project, single):
    dumps = run(project, "nodes", nodes(), "fsdp2", steps=2, extra=["save_at=1"])
    assert setup(dumps)["world_size"] == 2 and setup(dumps)["sharded"]
    for step in (1, 2):
        for rank in (0, 1):
            assert_same_step(load(dumps, rank, step), load(single, 0, step))
    # Launched again, the two nodes resume from step 1 (resume: auto) and take step 2 as the first launch did.
    resumed = run(project, "nodes", nodes(), "fsdp2", steps=2, dumps_name="nodes-resumed")
    assert setup(resumed)["run_id"] == setup(dumps)["run_id"]
    assert torch.load(resumed / "rank0" / "start.pt", weights_only=False)["step"] == 1
    for rank in (0, 1):
        assert_bitwise(load(resumed, rank, 2), load(dumps, rank, 2))


def test_two_processes_record_one_run_and_resume_each_with_its_own_random_state(project):
    """Every process draws its own random stream (forced apart at the start, and LoRA dropout draws from it): the
    processes agree on one run identity, and a resume continues each process's own stream, to the bit."""
    root = project[0]
    lora = ["lora.enabled=true", "lora.r=4", "lora.dropout=0.5", "diverge_rng=1"]
    torchrun = [[TORCHRUN, "--nproc_per_node", "2"]]
    whole = run(project, "rng", torchrun, "ddp", steps=3, extra=[*lora, "save_at=2"])
    recorded = json.loads((root / "rng/run.json").read_text())["run_id"]
    saved = root / "rng/checkpoints/step-000002"
    assert setup(whole, 0)["run_id"] == setup(whole, 1)["run_id"] == recorded
    assert json.loads((saved / "lineage.json").read_text())["run_id"] == recorded
    states = [torch.load(saved / f"rng/rank-{r:05d}.pt", weights_only=False) for r in (0, 1)]
    assert not torch.equal(states[0]["torch"], states[1]["torch"])  # premise: the processes' streams differ
    resumed = run(project, "rng", torchrun, "ddp", steps=3, extra=lora, dumps_name="rng-resumed")
    assert setup(resumed)["run_id"] == recorded
    assert sorted(p.name for p in (resumed / "rank1").glob("step*.pt")) == ["step3.pt"]
    for rank in (0, 1):
        assert_bitwise(load(resumed, rank, 3), load(whole, rank, 3))


def test_fsdp2_keeps_float32_master_weights_of_a_bf16_model(project):
    """bf16 model, FSDP2 with its default mixed precision, lr 1e-6: the weights stay float32 and move by what
    AdamW computes in float64 from the same gradient (bf16 weights would round such a step to nothing)."""
    dumps = run(project, "bf16", [[TORCHRUN, "--nproc_per_node", "2"]], "fsdp2", steps=1,
                extra=["model.dtype=bfloat16", "train.lr=1e-6", "grpo.num_iterations=1"])  # fmt: skip
    assert setup(dumps)["sharded"] and setup(dumps)["param_dtypes"] == ["torch.float32"]
    start = torch.load(dumps / "rank0" / "start.pt", weights_only=False)["params"]
    assert_update_is_adamw_in_float64(start, load(dumps, 0, 1), lr=1e-6)


def test_lora_under_fsdp2_saves_the_merged_weights_of_one_process(project):
    """LoRA adapters sharded with their layers, with supervised rows replayed beside the policy loss (each process
    its share): the two processes train them as one process does, and the consolidated model (adapters folded in,
    gathered tensor by tensor from the shards) is one process's."""
    from safetensors.torch import load_file

    root = project[0]
    replay = root / "replay.jsonl"
    replay.write_text("".join(json.dumps({"id": f"s{i}", "audio": f"c{i}.wav", "prompt": "Tempo in BPM?",
                                          "answer": str(100 + 7 * i)}) + "\n" for i in range(4)))  # fmt: skip
    lora = ["lora.enabled=true", "lora.r=4", "save_at=2", f"data.replay={replay}", "grpo.replay_coef=0.5",
            "grpo.replay_rows=2"]  # fmt: skip
    alone = run(project, "lora-single", [[sys.executable]], "none", steps=2, extra=lora)
    sharded = run(project, "lora-fsdp2", [[TORCHRUN, "--nproc_per_node", "2"]], "fsdp2", steps=2, extra=lora)
    assert setup(sharded)["sharded"]
    for step in (1, 2):
        assert load(alone, 0, step)["metrics"]["replay/nll"] > 0  # premise: rows were replayed on every step
        assert_same_step(load(sharded, 1, step), load(alone, 0, step))
    a = load_file(str(root / "lora-single/checkpoints/step-000002/model/model.safetensors"))
    b = load_file(str(root / "lora-fsdp2/checkpoints/step-000002/model/model.safetensors"))
    assert a.keys() == b.keys() and not any("lora" in k for k in a)
    base = load_file(str(Path(project[3]) / "model.safetensors"))
    moved = [k for k in a if k in base and not torch.equal(a[k], base[k])]
    assert any("q_proj" in k for k in moved)  # premise: the adapters changed the merged weights
    assert all((a[k] - b[k]).abs().max() <= 1e-5 for k in a)
