"""Logprob pass speed: forward + backward over one group, shared prefix vs per sample.

A bench-size checkpoint of ``--family`` (default Music Flamingo) built locally (float32, sdpa), one prompt with A
seconds of audio (~25 audio tokens per second), G completions of C tokens. The shared-prefix path runs the audio
encoder and the prompt once and the G completions against the repeated prompt KV cache; the per-sample path runs G
full sequences. Runs alternate between the two paths (this machine is noisy), medians are compared. Peak memory of
each path is measured in a fresh subprocess (peak RSS during the pass minus RSS before it). With ``--grpo-step`` it
also times whole GRPO steps (vLLM rollouts included) with each path, alternating.

With ``--distributed`` it measures at scale, on 2 processes (torchrun, gloo):

- the same comparison under FSDP2 with activation checkpointing: each process scores its own group (its own clip)
  through the wrapped ``LogprobModule``, the two paths alternating, forward + backward;
- the peak memory per process of three training steps (load, wrap, AdamW, forward + backward + optimiser step,
  activation checkpointing on), under DDP and under FSDP2, each in a fresh job: peak RSS minus RSS before the
  model loads (the libraries already imported), at the acceptance setting, and at a small batch (5 s, G = 2,
  C = 16, the frozen encoder's outputs from the audio cache as the trainer reads them) where the model's state
  rather than the activations decides: over all three steps, and over the two after the first (the high-water
  mark reset once the cache is filled and AdamW's state exists). Each is measured twice, in separate jobs: as
  peak RSS, and as the peak of the bytes held in live tensors (``TensorPeak``, torch's profiler; the CPU's
  counterpart of a GPU's ``max_memory_allocated``);
- the same two peaks at the acceptance setting for the scale-size model (56.4 M parameters, 24 units), whose state,
  as a real checkpoint's, is most of its memory: on the bench-size model, activations and buffers that no strategy
  shards outweigh the state, and the ratio says little about a real checkpoint.

Run: ``.venv/bin/python benchmarks/logprob_pass.py [--sweep] [--grpo-step] [--distributed]``. The main ratio is
printed last.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve()


def _setup(model_dir: Path, audio_s: float, group: int, completion: int, seed: int = 0):
    from transformers import AutoProcessor

    from grpo_audio.data.collate import collate_prompts
    from grpo_audio.data.schema import Row
    from grpo_audio.data.synthetic import make_clip
    from grpo_audio.models import ModelSpec, family_of_checkpoint, load_policy

    family = family_of_checkpoint(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    model = load_policy(ModelSpec(model_dir, family.name, attn_implementation="sdpa"))
    wave = make_clip("key", "bench", np.random.default_rng(seed)).wave
    wave = np.tile(wave, int(np.ceil(audio_s * 16000 / len(wave))))[: int(audio_s * 16000)]
    row = Row(id="bench", audio=wave, sampling_rate=16000, prompt="Describe this music in detail.")
    prompts = collate_prompts(family, processor, [row], [wave])
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(20, 500, (group, completion), generator=g)
    mask = torch.ones_like(ids)
    return model, prompts, ids, mask, processor.tokenizer.pad_token_id


def _pass(model, prompts, ids, mask, pad, shared: bool) -> float:
    from grpo_audio.logprobs import completion_logprobs, shared_prefix_logprobs

    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    if shared:
        lps, _ = shared_prefix_logprobs(model, prompts, [0], ids.shape[0], ids, mask, pad)
    else:
        lps, _ = completion_logprobs(model, prompts, [0] * ids.shape[0], ids, mask, pad)
    (lps * mask).sum().backward()
    return time.perf_counter() - start


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def memory_probe(args) -> None:
    model, prompts, ids, mask, pad = _setup(Path(args.model_dir), args.audio, args.group, args.completion)
    before = _rss_kb("VmRSS:")
    _pass(model, prompts, ids, mask, pad, shared=args.path == "shared")
    print(json.dumps({"peak_mb": (_rss_kb("VmHWM:") - before) / 1024}))


def peak_mb(model_dir: Path, path: str, audio: float, group: int, completion: int) -> float:
    out = subprocess.run(
        [
            sys.executable,
            str(HERE),
            "--memory-probe",
            "--model-dir",
            str(model_dir),
            "--path",
            path,
            "--audio",
            str(audio),
            "--group",
            str(group),
            "--completion",
            str(completion),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mb"]


def compare(model_dir: Path, audio: float, group: int, completion: int, reps: int) -> dict:
    model, prompts, ids, mask, pad = _setup(model_dir, audio, group, completion)
    _pass(model, prompts, ids, mask, pad, True)  # warm-up
    times = {"shared": [], "per_sample": []}
    for _ in range(reps):
        times["shared"].append(_pass(model, prompts, ids, mask, pad, True))
        times["per_sample"].append(_pass(model, prompts, ids, mask, pad, False))
    p = int(prompts.attention_mask.sum())
    result = {
        "audio_s": audio,
        "G": group,
        "P": p,
        "C": completion,
        "shared_s": statistics.median(times["shared"]),
        "per_sample_s": statistics.median(times["per_sample"]),
        "theory": group * (p + completion) / (p + group * completion),
        "shared_peak_mb": peak_mb(model_dir, "shared", audio, group, completion),
        "per_sample_peak_mb": peak_mb(model_dir, "per_sample", audio, group, completion),
    }
    result["ratio"] = result["per_sample_s"] / result["shared_s"]
    return result


def grpo_steps(model_dir: Path, reps: int) -> dict:
    """Whole GRPO steps (vLLM rollouts, rewards, update, sync) alternating the two logprob paths."""
    from grpo_audio.config import load_config
    from grpo_audio.data.schema import Row
    from grpo_audio.data.synthetic import make_clip
    from grpo_audio.models import family_of_checkpoint
    from grpo_audio.rewards import RewardSet
    from grpo_audio.trainer import GRPOTrainer

    rows = []
    for i in range(2):
        wave = make_clip("key", f"s{i}", np.random.default_rng(i)).wave
        wave = np.tile(wave, int(np.ceil(30 * 16000 / len(wave))))[: 30 * 16000]
        rows.append(Row(id=f"s{i}", audio=wave, sampling_rate=16000, prompt="Describe this music."))
    cfg = load_config(
        None,
        [
            f"output_dir={tempfile.mkdtemp()}",
            f"model.path={model_dir}",
            f"model.family={family_of_checkpoint(model_dir).name}",
            "rollout.engine=vllm",
            "rollout.max_new_tokens=128",
            "rollout.max_model_len=2048",
            "grpo.num_generations=8",
            "train.prompts_per_step=2",
            "train.micro_batch_size=8",
            "train.resume=never",
            "train.lr=1e-5",
            "train.max_steps=100",
        ],
    )

    def length(prompts, completions, **kw):
        return [len(c[0]["content"]) / 100 for c in completions]

    trainer = GRPOTrainer(cfg, reward_funcs=RewardSet([length]), train_rows=rows)
    trainer.train_step()  # warm-up
    times = {True: [], False: []}
    for _ in range(reps):
        for shared in (True, False):
            trainer.cfg.grpo.shared_prefix = shared
            m = trainer.train_step()
            times[shared].append((m["time/step_s"], m["time/update_s"], m["time/rollout_s"]))
    trainer.close()
    med = {k: [statistics.median(x[i] for x in v) for i in range(3)] for k, v in times.items()}
    return {
        "shared_step_s": med[True][0],
        "per_sample_step_s": med[False][0],
        "shared_update_s": med[True][1],
        "per_sample_update_s": med[False][1],
        "rollout_s": med[True][2],
        "step_ratio": med[False][0] / med[True][0],
    }


class TensorPeak(torch.profiler.profile):
    """The peak of the bytes held in live tensors while profiling: every allocation and free that torch's CPU
    allocator records (``profile_memory``), summed in time order. It is the CPU's counterpart of a GPU's
    ``torch.cuda.max_memory_allocated``: it leaves out what the process holds besides tensors (libraries, oneDNN's
    own buffers, what the C allocator keeps), which RSS counts.
    """

    MARK = "tensor-peak-mark"

    def __init__(self) -> None:
        super().__init__(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)

    def mark(self) -> None:
        """Count the peak from here on (the live bytes at this point are its floor)."""
        with torch.profiler.record_function(self.MARK):
            pass

    def peak_mb(self) -> float:
        events = self.profiler.kineto_results.events()
        since = max((e.start_ns() for e in events if e.name() == self.MARK), default=0)
        changes = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
        live = peak = 0
        for at, nbytes in changes:
            live += nbytes
            if at >= since:
                peak = max(peak, live)
        return peak / 2**20


def distributed_worker(args) -> None:
    """One process of a ``--distributed`` job: times the two paths, or measures one step's peak memory."""
    from torch.distributed.tensor import DTensor

    from grpo_audio.audio_cache import AudioCache
    from grpo_audio.logprobs import LogprobModule, enable_checkpointing
    from grpo_audio.models import family_of_checkpoint
    from grpo_audio.parallel import Parallel

    parallel = Parallel(args.strategy)
    rank = parallel.process.rank
    _setup(Path(args.model_dir), 1.0, 1, 1, seed=rank)  # every import and its memory before the baseline
    before = _rss_kb("VmRSS:")
    tensors = TensorPeak() if args.measure == "tensors" else None  # its own run: the profiler's records take RSS
    if tensors:
        tensors.__enter__()
    model, prompts, ids, mask, pad = _setup(Path(args.model_dir), args.audio, args.group, args.completion, seed=rank)
    enable_checkpointing(model)
    model.train()
    keep_whole = ()
    family = family_of_checkpoint(Path(args.model_dir))
    if args.freeze_encoder:
        encoder = family.audio_encoder(model)
        encoder.requires_grad_(False)
        keep_whole = (encoder,)
    module = LogprobModule(model, "shared_prefix")
    wrapped = parallel.wrap(module, keep_whole)
    group = ids.shape[0]
    if args.freeze_encoder:  # as the trainer does: the frozen encoder's outputs come from the audio cache
        AudioCache().encoder(model, family).__enter__()

    def run(path: str) -> float:
        module.path = path
        wrapped.zero_grad(set_to_none=True)
        parallel.barrier()
        start = time.perf_counter()
        lps, _ = wrapped(prompts, [0] * group, group, list(range(group)), ids, mask, pad)
        (lps * mask).sum().backward()
        parallel.barrier()
        return time.perf_counter() - start

    if args.measure in ("memory", "tensors"):
        optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=1e-5)
        run("shared_prefix")  # the first step fills the audio cache and creates AdamW's state
        optimizer.step()
        if args.steady:  # the peak of the steps that follow: the high-water mark starts again here
            Path("/proc/self/clear_refs").write_text("5")
            if tensors:
                tensors.mark()
        for _ in range(2):
            run("shared_prefix")
            optimizer.step()
        local = [p.to_local() if isinstance(p, DTensor) else p for p in wrapped.parameters()]
        local += [p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad for p in wrapped.parameters()]
        local += [
            t.to_local() if isinstance(t, DTensor) else t for st in optimizer.state.values() for t in st.values()
        ]
        state = sum(t.numel() * t.element_size() for t in local if t is not None and t.dim() > 0) / 2**20
        peak = (_rss_kb("VmHWM:") - before) / 1024
        if tensors:
            tensors.__exit__(None, None, None)
            peak = tensors.peak_mb()
        measured = parallel.gather(torch.tensor([peak, state]))
        if parallel.process.is_main:
            peak, state = measured.view(-1, 2).max(0).values.tolist()
            print(json.dumps({"peak_mb": peak, "state_mb": state}))
        return
    run("shared_prefix")  # warm-up
    times = {"shared_prefix": [], "per_sample": []}
    for _ in range(args.reps):
        for path in times:
            times[path].append(run(path))
    if parallel.process.is_main:
        print(json.dumps({k: statistics.median(v) for k, v in times.items()}))


# glibc returns freed blocks of 64 KiB and more to the system at once, so that the peak RSS follows the live tensors
# rather than what the allocator kept (the same for every strategy measured).
ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_ARENA_MAX": "1"}


def torchrun(model_dir: Path, *flags: str) -> dict:
    """A 2-process ``--worker`` job; the main process's last JSON line."""
    command = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", str(HERE), "--worker"]
    out = subprocess.run(
        [*command, "--model-dir", str(model_dir), *flags],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **ALLOCATOR},
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def distributed(model_dir: Path, args) -> None:
    sizes = ["--audio", str(args.audio), "--group", str(args.group), "--completion", str(args.completion)]
    t = torchrun(model_dir, "--strategy", "fsdp2", "--measure", "time", "--reps", str(args.reps), *sizes)
    ratio = t["per_sample"] / t["shared_prefix"]
    print(
        f"2-process FSDP2 + activation checkpointing, G={args.group}, {args.audio:.0f} s, C={args.completion}: "
        f"shared {t['shared_prefix']:.2f} s, per-sample {t['per_sample']:.2f} s, ratio {ratio:.2f}x",
        flush=True,
    )
    small = ["--audio", "5", "--group", "2", "--completion", "16", "--freeze-encoder"]
    settings = (
        (f"G={args.group}, {args.audio:.0f} s, C={args.completion}", sizes),
        ("G=2, 5 s, C=16, frozen encoder read from the audio cache", small),
        ("the same, steps after the first (the cache filled, AdamW's state made)", [*small, "--steady"]),
    )
    for name, flags in settings:
        compare_memory(model_dir, f"bench size, {name}", flags)
    from grpo_audio.models.tiny import build_tiny_model

    scale = build_tiny_model("music_flamingo", model_dir.parent / "scale", size="scale", seed=0)
    compare_memory(scale, f"scale size, G={args.group}, {args.audio:.0f} s, C={args.completion}", sizes)
    print(f"ratio per-sample/shared under 2-process FSDP2 with activation checkpointing: {ratio:.2f}x")


def compare_memory(model_dir: Path, name: str, flags: list[str]) -> None:
    """Peak memory per process of three training steps under DDP and under FSDP2 (each a fresh 2-process job): peak
    RSS, the peak in live tensors, and the parameters + gradients + AdamW state."""
    m = {s: torchrun(model_dir, "--strategy", s, "--measure", "memory", *flags) for s in ("ddp", "fsdp2")}
    t = {s: torchrun(model_dir, "--strategy", s, "--measure", "tensors", *flags) for s in ("ddp", "fsdp2")}
    print(
        f"memory per process, training steps ({name}; activation checkpointing): peak RSS DDP "
        f"{m['ddp']['peak_mb']:.0f} MB, FSDP2 {m['fsdp2']['peak_mb']:.0f} MB, FSDP2/DDP "
        f"{m['fsdp2']['peak_mb'] / m['ddp']['peak_mb']:.2f}; peak in live tensors DDP "
        f"{t['ddp']['peak_mb']:.0f} MB, FSDP2 {t['fsdp2']['peak_mb']:.0f} MB, FSDP2/DDP "
        f"{t['fsdp2']['peak_mb'] / t['ddp']['peak_mb']:.2f}; parameters + gradients + AdamW state DDP "
        f"{m['ddp']['state_mb']:.1f} MB, FSDP2 {m['fsdp2']['state_mb']:.1f} MB, FSDP2/DDP "
        f"{m['fsdp2']['state_mb'] / m['ddp']['state_mb']:.2f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="also G in 4, 8, 16 x audio 10, 30, 120 s")
    parser.add_argument("--grpo-step", action="store_true", help="also whole GRPO steps with vLLM rollouts")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--distributed", action="store_true", help="2 processes: FSDP2 timing, DDP vs FSDP2 memory")
    parser.add_argument("--memory-probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", help=argparse.SUPPRESS)
    parser.add_argument("--freeze-encoder", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--steady", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--family", default="music_flamingo", help="the model family of the bench-size checkpoint")
    parser.add_argument("--audio", type=float, default=30.0)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--completion", type=int, default=128)
    args = parser.parse_args()
    if args.memory_probe:
        return memory_probe(args)
    if args.worker:
        return distributed_worker(args)

    from grpo_audio.models.tiny import build_tiny_model

    torch.manual_seed(0)
    model_dir = build_tiny_model(args.family, Path(tempfile.mkdtemp()) / args.family, size="bench", seed=0)
    header = (
        f"{'audio':>6} {'G':>3} {'P':>5} {'C':>4} {'shared s':>9} {'per-sample s':>12} {'ratio':>6} "
        f"{'theory':>6} {'shared MB':>9} {'per-sample MB':>13}"
    )
    if args.distributed:
        return distributed(model_dir, args)
    print(header)

    def show(r):
        print(
            f"{r['audio_s']:>6.0f} {r['G']:>3} {r['P']:>5} {r['C']:>4} {r['shared_s']:>9.2f} "
            f"{r['per_sample_s']:>12.2f} {r['ratio']:>6.2f} {r['theory']:>6.2f} {r['shared_peak_mb']:>9.0f} "
            f"{r['per_sample_peak_mb']:>13.0f}",
            flush=True,
        )

    if args.sweep:
        for audio in (10.0, 30.0, 120.0):
            for group in (4, 8, 16):
                if (audio, group) != (30.0, 8):
                    show(compare(model_dir, audio, group, args.completion, reps=2))
    main_result = compare(model_dir, 30.0, 8, args.completion, reps=args.reps)
    show(main_result)
    if args.grpo_step:
        s = grpo_steps(model_dir, reps=3)
        print(
            f"GRPO step (vLLM rollouts, G=8, 2 prompts x 30 s, 128 new tokens): shared {s['shared_step_s']:.1f} s "
            f"(update {s['shared_update_s']:.1f} s), per-sample {s['per_sample_step_s']:.1f} s "
            f"(update {s['per_sample_update_s']:.1f} s), rollout {s['rollout_s']:.1f} s; "
            f"step ratio {s['step_ratio']:.2f}x"
        )
    print(f"ratio per-sample/shared at G=8, 30 s, C={args.completion}: {main_result['ratio']:.2f}x")


if __name__ == "__main__":
    main()
