"""One GRPO step of grpo-audio against the audio-GRPO loop users fork today (R1-AQA style), side by side.

The peer, written here as R1-AQA and the works built on it run (they subclass TRL's GRPOTrainer): the processor's
prompts and audio go into transformers' ``generate`` with ``num_return_sequences=G``; then one forward over every
completion, prompt and audio included, with the audio features repeated G times (R1-AQA's ``repeat_interleave``);
then TRL's own loss, ``GRPOTrainer._compute_loss``, called on those logprobs (a stub stands in for the trainer
object, as in ``tests/test_loss.py``); backward and an AdamW step. It is an equivalent loop around TRL's loss
rather than a GRPOTrainer subclass: the subclass would add TRL's data loading and logging around the same three
phases. Its phases: rollout (``generate``), logprobs + update; it has no engine to sync.

grpo-audio: its default trainer (``GRPOTrainer``: vLLM rollouts, the old policy's logprobs for the
importance-sampling correction, the shared-prefix logprob pass, the update, the weight sync into vLLM).

Both sides: the same bench-size checkpoint (built locally, float32), the same prompts (2 per step), G = 8,
completions of exactly C = 128 tokens (the end-of-turn token ignored on both sides, so they do the same work), the
same reward, ``dapo`` aggregation, beta 0, lr 1e-6, AdamW. Steps alternate between the two (this machine is noisy);
medians of ``--reps`` steps after one warm-up step each.

Run: ``.venv/bin/python benchmarks/vs_peers.py [--families qwen2_audio music_flamingo] [--seconds 5 30]``. The
step-time ratio at 30 s audio is printed last.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

G, C, PROMPTS = 8, 128, 2


def clips(seconds: float) -> list[np.ndarray]:
    from grpo_audio.data.synthetic import make_clip

    waves = []
    for i in range(PROMPTS):
        wave = make_clip("key", f"s{i}", np.random.default_rng(i)).wave
        waves.append(np.tile(wave, int(np.ceil(seconds * 16000 / len(wave))))[: int(seconds * 16000)])
    return waves


def reward(prompts, completions, **kwargs) -> list[float]:
    """The same reward on both sides: the share of digits in the completion."""
    return [sum(ch.isdigit() for ch in c[0]["content"]) / max(1, len(c[0]["content"])) for c in completions]


class PeerLoop:
    """The R1-AQA-style step (module docstring) on its own copy of the model."""

    def __init__(self, model_dir: Path):
        from transformers import AutoProcessor

        from grpo_audio.models import ModelSpec, family_of_checkpoint, load_policy

        self.family = family_of_checkpoint(model_dir)
        self.processor = AutoProcessor.from_pretrained(model_dir)
        self.model = load_policy(ModelSpec(model_dir, self.family.name)).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-6)

    def step(self, prompts: list[str], waves: list[np.ndarray]) -> dict[str, float]:
        from trl import GRPOTrainer

        tok = self.processor.tokenizer
        start = time.perf_counter()
        inputs = self.family.process(self.processor, prompts, waves)
        with torch.no_grad():
            out = self.model.generate(
                **inputs,
                do_sample=True,
                temperature=1.0,
                num_return_sequences=G,
                max_new_tokens=C,
                min_new_tokens=C,
                eos_token_id=None,
                pad_token_id=tok.pad_token_id,
            )
        p = inputs["input_ids"].shape[1]
        completion_ids = out[:, p:]  # [B*G, C]
        rollout_s = time.perf_counter() - start

        texts = tok.batch_decode(completion_ids, skip_special_tokens=True)
        rewards = torch.tensor(reward(None, [[{"content": t}] for t in texts]))
        grouped = rewards.view(-1, G)
        advantages = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).view(-1)

        start = time.perf_counter()
        prompt_ids = inputs["input_ids"].repeat_interleave(G, 0)
        prompt_mask = inputs["attention_mask"].repeat_interleave(G, 0)
        audio = {k: inputs[k].repeat_interleave(G, 0) for k in self.family.audio_feature_keys}
        mask = torch.ones_like(completion_ids)

        def logps_and_entropies(model, input_ids, attention_mask, logits_to_keep, **kwargs):
            from trl.trainer.utils import entropy_from_logits, selective_log_softmax

            # as TRL does: the logits of the positions that predict the completion, the audio with every sequence
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, **audio).logits
            logits = logits[:, -logits_to_keep - 1 : -1]
            with torch.no_grad():
                entropies = entropy_from_logits(logits)
            return selective_log_softmax(logits, input_ids[:, -logits_to_keep:]), entropies, None

        stub = SimpleNamespace(
            _get_per_token_logps_and_entropies=logps_and_entropies,
            aux_loss_enabled=False,
            top_entropy_quantile=1.0,
            off_policy_mask_threshold=None,
            importance_sampling_level="token",
            beta=0.0,
            args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
            loss_type="dapo",
            epsilon_low=0.2,
            epsilon_high=0.2,
            use_vllm=False,
            vllm_importance_sampling_correction=False,
            model=SimpleNamespace(training=True),
            current_gradient_accumulation_steps=1,
            max_completion_length=C,
            accelerator=SimpleNamespace(
                num_processes=1,
                gather=lambda x: x,
                reduce=lambda x, reduction="sum": x,
                gather_for_metrics=lambda x: x,
            ),
            _entropy_bonus_enabled=False,
            _metrics=defaultdict(lambda: defaultdict(list)),
        )
        batch = {
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "completion_ids": completion_ids,
            "completion_mask": mask,
            "advantages": advantages,
            "num_items_in_batch": mask.sum(),
        }
        self.optimizer.zero_grad(set_to_none=True)
        GRPOTrainer._compute_loss(stub, None, batch).backward()
        self.optimizer.step()
        update_s = time.perf_counter() - start
        return {"step_s": rollout_s + update_s, "rollout_s": rollout_s, "update_s": update_s, "sync_s": 0.0}


def ours(model_dir: Path, rows) -> tuple[object, callable]:
    """grpo-audio's trainer on ``rows`` and a function running one step, completions forced to C tokens."""
    from grpo_audio.config import load_config
    from grpo_audio.models import family_of_checkpoint
    from grpo_audio.rewards import RewardSet
    from grpo_audio.trainer import GRPOTrainer

    cfg = load_config(
        None,
        [
            f"output_dir={tempfile.mkdtemp()}",
            f"model.path={model_dir}",
            f"model.family={family_of_checkpoint(model_dir).name}",
            "rollout.engine=vllm",
            f"rollout.max_new_tokens={C}",
            "rollout.max_model_len=2048",
            f"grpo.num_generations={G}",
            f"train.prompts_per_step={PROMPTS}",
            f"train.micro_batch_size={G}",
            "train.resume=never",
            "train.lr=1e-6",
            "train.max_steps=1000",
            "train.eval_every=0",
        ],
    )
    trainer = GRPOTrainer(cfg, reward_funcs=RewardSet([reward]), train_rows=rows)
    generate = trainer.engine.generate

    def full_length(rows, n, sampling):  # the same work as the peer: C tokens each, the end-of-turn ignored
        sampling.ignore_eos = True
        return generate(rows, n=n, sampling=sampling)

    trainer.engine.generate = full_length

    def step() -> dict[str, float]:
        m = trainer.train_step()
        return {
            "step_s": m["time/step_s"],
            "rollout_s": m["time/rollout_s"],
            "update_s": m["time/logprob_s"] + m["time/update_s"],
            "sync_s": m["time/sync_s"],
        }

    return trainer, step


def compare(family: str, seconds: float, reps: int, root: Path) -> dict:
    from transformers import AutoProcessor

    from grpo_audio.data.schema import Row
    from grpo_audio.models import get_family
    from grpo_audio.models.tiny import build_tiny_model

    model_dir = root / family
    if not model_dir.exists():
        build_tiny_model(family, model_dir, size="bench", seed=0)
    waves = clips(seconds)
    rows = [Row(id=f"s{i}", audio=w, sampling_rate=16000, prompt="Describe this music.") for i, w in enumerate(waves)]
    fam, processor = get_family(family), AutoProcessor.from_pretrained(model_dir)
    prompts = [row.render(fam, processor) for row in rows]
    peer = PeerLoop(model_dir)
    trainer, step = ours(model_dir, rows)
    try:
        peer.step(prompts, waves)  # warm-up
        step()
        times: dict[str, list[dict]] = {"peer": [], "ours": []}
        for _ in range(reps):
            times["peer"].append(peer.step(prompts, waves))
            times["ours"].append(step())
    finally:
        trainer.close()
    med = {side: {k: statistics.median(t[k] for t in ts) for k in ts[0]} for side, ts in times.items()}
    return {"family": family, "seconds": seconds, **med, "ratio": med["peer"]["step_s"] / med["ours"]["step_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=["qwen2_audio", "music_flamingo"])
    parser.add_argument("--seconds", nargs="+", type=float, default=[5.0, 30.0])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp())
    results = []
    for family in args.families:
        for seconds in args.seconds:
            r = compare(family, seconds, args.reps, root)
            results.append(r)
            for side in ("peer", "ours"):
                t = r[side]
                print(
                    f"{family} {seconds:.0f} s {side:>4}: step {t['step_s']:.2f} s (rollout {t['rollout_s']:.2f}, "
                    f"logprobs + update {t['update_s']:.2f}, sync {t['sync_s']:.2f})",
                    flush=True,
                )
            print(f"{family} {seconds:.0f} s: grpo-audio {r['ratio']:.2f}x faster per step", flush=True)
    at_30 = [r for r in results if r["seconds"] == 30.0]
    if at_30:
        print(
            "audio step-time ratio at 30 s, peer / grpo-audio: "
            + ", ".join(f"{r['family']} {r['ratio']:.2f}x" for r in at_30)
        )


if __name__ == "__main__":
    main()
