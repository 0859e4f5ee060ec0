"""Is the answer in the audio features? Linear probes per question type on pooled audio features.

Diagnostic for the embedded recipe: it renders the synthetic corpus as the recipe does, builds the demo-size
Music Flamingo (random weights, the audio encoder frozen at initialisation as the recipe keeps it) and pools, over
each clip's frames:

- ``encoder``: the encoder's outputs (mean and standard deviation per channel), probe inputs standardised;
- ``log-mel``: the log-mel spectrogram (mean and standard deviation), standardised;
- ``embeds raw`` / ``embeds std``: the audio embeddings the language model reads (the projector's outputs, mean
  over time), as built and after ``recipe.calibrate.standardize_audio_embeddings`` (what the recipe does to a
  fresh model), probe inputs *not* standardised: the language model reads them as they are.

A multinomial logistic regression per question type (full batch, Adam, 300 steps) is fit on the training clips'
exact labels and scored on the held-out clips twice: ``open`` (the exact label among all classes) and ``mcq`` (the
best-scored of the held-out question's four choices: what a model that reads these pooled features linearly and
then picks a listed choice would score on the recipe's MCQ evaluation).

Run: ``.venv/bin/python benchmarks/feature_probe.py [--clips 800]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch


def pooled(model, processor, family, rows) -> dict[str, torch.Tensor]:
    """Per clip: encoder-output and log-mel mean and std over the valid frames."""
    enc, mel = [], []
    for i in range(0, len(rows), 32):
        waves = [r.load_audio(family).wave for r in rows[i : i + 32]]
        f = processor.feature_extractor(
            waves, sampling_rate=16000, return_tensors="pt", padding="max_length", return_attention_mask=True
        )
        with torch.no_grad():
            h = model.model.audio_tower(f["input_features"], input_features_mask=f["attention_mask"])
        frames = f["attention_mask"].sum(-1)
        for j in range(len(waves)):
            e = h.last_hidden_state[j, : max(1, int(frames[j]) // 4)]
            m = f["input_features"][j, :, : int(frames[j])].T
            enc.append(torch.cat([e.mean(0), e.std(0)]))
            mel.append(torch.cat([m.mean(0), m.std(0)]))
    return {"encoder": torch.stack(enc), "log-mel": torch.stack(mel)}


def embedding_means(model, processor, family, rows) -> torch.Tensor:
    """[N, D] each clip's audio embeddings (what the language model reads), averaged over time."""
    from grpo_audio.recipe.calibrate import audio_embeddings

    return torch.stack([audio_embeddings(model, family, processor, [r]).mean(0) for r in rows])


def probe(x, y, x_test, y_test, choices, standardise: bool = True) -> tuple[float, float]:
    """(exact-label accuracy, accuracy of the best-scored of each held-out question's choices)."""
    classes = sorted(set(y) | {c for cs in choices for c in cs})
    if standardise:
        mu, sd = x.mean(0), x.std(0) + 1e-5
        x, x_test = (x - mu) / sd, (x_test - mu) / sd
    target = torch.tensor([classes.index(c) for c in y])
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], len(classes))
    opt = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(x), target).backward()
        opt.step()
    with torch.no_grad():
        logits = head(x_test)
    exact = sum(classes[int(k)] == t for k, t in zip(logits.argmax(-1), y_test, strict=True))
    mcq = 0
    for row, t, cs in zip(logits, y_test, choices, strict=True):
        mcq += cs[int(row[[classes.index(c) for c in cs]].argmax())] == t
    return exact / len(y_test), mcq / len(y_test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=800, help="training clips (the demo recipe's corpus: 800)")
    parser.add_argument("--eval-clips", type=int, default=100)
    parser.add_argument("--size", default="demo", choices=["test", "demo", "bench"], help="tiny model size")
    parser.add_argument("--chord-qualities", nargs="+", default=None, help="label space, as `grpo-audio synth`")
    parser.add_argument("--tempo-step", type=int, default=None, help="label space, as `grpo-audio synth`")
    parser.add_argument("--registers", type=int, nargs="+", default=None, help="label space, as `grpo-audio synth`")
    args = parser.parse_args()

    from transformers import AutoProcessor

    from grpo_audio.config import SyntheticConfig
    from grpo_audio.data.loaders import load_manifest
    from grpo_audio.data.synthetic import TASKS, write_corpus
    from grpo_audio.models import ModelSpec, get_family, load_policy
    from grpo_audio.models.tiny import build_tiny_model
    from grpo_audio.recipe.calibrate import standardize_audio_embeddings

    tmp = Path(tempfile.mkdtemp())
    family = get_family("music_flamingo")
    space = SyntheticConfig(
        chord_qualities=args.chord_qualities or [], tempo_step=args.tempo_step or 4, registers=args.registers or []
    ).label_space()
    corpus = write_corpus(tmp / "data", n=args.clips, seed=0, n_eval=args.eval_clips, space=space)
    base = build_tiny_model(family.name, tmp / "base", size=args.size, seed=0)
    model = load_policy(ModelSpec(base, family.name)).eval()
    processor = AutoProcessor.from_pretrained(base)
    train = [r for r in load_manifest(corpus["skills"], family=family) if r.id.endswith("-open")]
    test = [r for r in load_manifest(corpus["eval"], family=family) if r.id.endswith("-mcq")]
    feats, feats_t = pooled(model, processor, family, train), pooled(model, processor, family, test)
    feats["embeds raw"] = embedding_means(model, processor, family, train)
    feats_t["embeds raw"] = embedding_means(model, processor, family, test)
    standardize_audio_embeddings(model, family, processor, train)
    feats["embeds std"] = embedding_means(model, processor, family, train)
    feats_t["embeds std"] = embedding_means(model, processor, family, test)

    names = ["encoder", "log-mel", "embeds raw", "embeds std"]
    print(f"{len(train)} training / {len(test)} held-out clips; linear-probe accuracy, open (exact) / mcq (4 choices)")
    print(f"{'task':11s} {'classes':>7s} " + " ".join(f"{n:>12s}" for n in names))
    mean = {n: 0.0 for n in names}
    for task in TASKS:
        i = [k for k, r in enumerate(train) if r.task == task]
        j = [k for k, r in enumerate(test) if r.task == task]
        y, y_t = [train[k].answer for k in i], [test[k].answer for k in j]
        choices = [test[k].choices for k in j]
        cells = []
        for n in names:
            exact, mcq = probe(feats[n][i], y, feats_t[n][j], y_t, choices, standardise=not n.startswith("embeds"))
            mean[n] += mcq / len(TASKS)
            cells.append(f"{exact:.2f} / {mcq:.2f}")
        print(f"{task:11s} {len(set(y)):7d} " + " ".join(f"{c:>12s}" for c in cells))
    print(f"{'mcq, mean':19s} " + " ".join(f"{mean[n]:12.2f}" for n in names))


if __name__ == "__main__":
    main()
