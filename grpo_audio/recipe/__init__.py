"""The Music Flamingo recipe: stages from one YAML, each starting from the previous stage's model.

This package owns sequencing the stages (``runner.py``), the checks before the first one (``checks.py``), the keys
and records that skip finished stages (``records.py``), the data-dependent initialisation of a fresh model
(``calibrate.py``), the typed stage results and report (``results.py``) and its files (``report.py``); each stage's
own work lives in ``sft``, ``trainer`` and ``eval``.

``text_pretrain`` (optional: language-model loss on the data's text without the audio, standing in for the
pretrained language model a real audio LLM starts from) -> ``sft`` (skills: captions and QA, target = answer)
-> ``cold_start`` (chain of thought, target = ``<think>..</think><answer>..</answer>``) -> ``grpo`` (rewards per
task type) -> ``eval``. After every training stage the model is evaluated on the eval set (accuracy per
question type, format rate), and at the end a report folder holds ``report.json``, ``report.md``,
``stages.png`` (accuracy per stage and question type), the GRPO curves, sample completions and the wall time.

Run: ``grpo-audio recipe examples/music_flamingo/tiny.yaml [key=value ...]``.

Re-running a recipe skips every stage already completed with the same settings and data from the same input model:
each finished stage leaves ``<stage>/STAGE_COMPLETE.json`` with its key (its settings' hash, the content
fingerprint of every data file it trains on and of the clips those files name (``grpo_audio.fingerprint``), its
input model's fingerprint and the key of the stage before it), its evaluation's key (settings and the eval file's
content), its output model and its report entry. A file edited in place therefore trains again the stages that read
it and every stage after them, and re-evaluates the models evaluated on it. A GRPO stage that was interrupted resumes
from its last checkpoint, and only from a checkpoint made under its current key (``<stage>/STAGE_STARTED.json``) from
its current input model (``checkpoint.Lineage``); anything else in its folder is replaced. Supervised stages write no
checkpoints: an interrupted one runs again.

Departure from the paper: the embedded default trains a tiny model from random weights on synthetic music in
minutes; the paper starts from Audio Flamingo 3 and trains on MF-Skills / MF-Think for days on GPUs.
"""

from .records import AUDIO_SFT_KINDS, READS, SFT_KINDS, STAGE_MARKER
from .results import FinalResult, GRPOOutcome, RecipeReport, SampledVs, StageResult
from .runner import Recipe

__all__ = [
    "AUDIO_SFT_KINDS",
    "READS",
    "SFT_KINDS",
    "STAGE_MARKER",
    "FinalResult",
    "GRPOOutcome",
    "Recipe",
    "RecipeReport",
    "SampledVs",
    "StageResult",
]
