"""Is the answer in the audio features? A linear probe per question type on pooled audio-encoder outputs.

Diagnostic for the embedded recipe: it renders the synthetic corpus, builds the demo-size Music Flamingo
(random weights, the audio encoder as the recipe keeps it: frozen at initialisation), runs the encoder over every
open-question clip and pools its outputs over time (mean and standard deviation per channel). A multinomial
logistic regression per question type is fit on the training clips (full batch, standardised features) and
scored on the held-out clips; the same is done on the pooled log-mel spectrogram. High probe accuracy with a low
recipe accuracy means the information reaches the language model and the training budget, not the features, is
what limits the recipe.

Run: ``.venv/bin/python benchmarks/feature_probe.py [--clips 1000]``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch


def pooled(model, processor, family, rows) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, 2D] encoder-output and [N, 2M] log-mel mean and std over each clip's valid frames."""
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
    return torch.stack(enc), torch.stack(mel)


def probe(x: torch.Tensor, y: list[str], x_test: torch.Tensor, y_test: list[str]) -> float:
    classes = sorted(set(y))
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
    pred = head(x_test).argmax(-1).tolist()
    return sum(classes[p] == t for p, t in zip(pred, y_test, strict=True)) / len(y_test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--eval-clips", type=int, default=100)
    args = parser.parse_args()

    from transformers import AutoProcessor

    from grpo_audio.data.loaders import load_manifest
    from grpo_audio.data.synthetic import TASKS, write_corpus
    from grpo_audio.models import get_family
    from grpo_audio.models.tiny import build_tiny_model

    tmp = Path(tempfile.mkdtemp())
    family = get_family("music_flamingo")
    corpus = write_corpus(tmp / "data", n=args.clips, seed=0, n_eval=args.eval_clips)
    base = build_tiny_model(family.name, tmp / "base", size="demo", seed=0)
    model = family.model_class().from_pretrained(base).eval()
    processor = AutoProcessor.from_pretrained(base)
    train = [r for r in load_manifest(corpus["skills"], family=family) if r.id.endswith("-open")]
    test = [r for r in load_manifest(corpus["eval"], family=family) if r.id.endswith("-open")]
    enc, mel = pooled(model, processor, family, train)
    enc_t, mel_t = pooled(model, processor, family, test)
    print(f"{len(train)} training / {len(test)} held-out clips; accuracy of a linear probe on pooled features")
    print(f"{'task':11s} {'classes':>7s} {'chance':>7s} {'encoder':>8s} {'log-mel':>8s}")
    for task in TASKS:
        i = [k for k, r in enumerate(train) if r.task == task]
        j = [k for k, r in enumerate(test) if r.task == task]
        y, y_t = [train[k].answer for k in i], [test[k].answer for k in j]
        acc_e = probe(enc[i], y, enc_t[j], y_t)
        acc_m = probe(mel[i], y, mel_t[j], y_t)
        print(f"{task:11s} {len(set(y)):7d} {1 / len(set(y)):7.2f} {acc_e:8.2f} {acc_m:8.2f}")


if __name__ == "__main__":
    main()
