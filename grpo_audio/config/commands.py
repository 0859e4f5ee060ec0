"""The schemas of the commands that take a typed config of their own: ``grpo-audio sft``, ``eval`` and ``synth``
(``train`` and ``recipe`` take :class:`RunConfig` and :class:`RecipeConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..data.schema import BAD_ROWS
from .fields import DTYPES, ENGINES, setting
from .recipe import CorpusConfig, EvalSettings, SFTConfig


@dataclass
class SFTCommandConfig(SFTConfig):
    """``grpo-audio sft``: one supervised stage on a manifest."""

    model: str = setting(help="Checkpoint directory to start from; required.")
    dtype: str = setting("float32", help="The weights' dtype in training.", choices=DTYPES)
    data: str = setting(help="JSONL manifest; required.")
    output_dir: str = setting(help="Output folder (the model goes to OUTPUT_DIR/model); required.")


@dataclass
class EvalCommandConfig(EvalSettings):
    """``grpo-audio eval``: one model on one evaluation file."""

    data: str = setting(
        help="Evaluation file: a grpo-audio manifest, MMAU JSON, MMAR JSON(L), MuChoMusic CSV or prompt JSON, or a "
        "JSON/JSONL/CSV file with fields=...; required."
    )
    engine: str = setting("vllm", help="Generation engine (greedy decoding).", choices=ENGINES)
    model: str = setting(help="Checkpoint directory; required.")
    dtype: str = setting("float32", help="The weights' dtype in the engine.", choices=DTYPES)
    out: str = setting("", help="Write the full report (per-row results) as JSON to this file.")
    predictions_out: str = setting(
        "",
        help="Write the source items with the benchmark's prediction field (MMAU model_output, MMAR "
        "answer_prediction, MuChoMusic model_output, otherwise prediction) filled with what its scorer credits.",
    )
    think: bool = setting(False, help="Benchmark prompts ask for <think> then <answer>.")
    bad_rows: str = setting(
        "raise", help="Rows that fail validation: raise (list them all and stop) or skip them.", choices=BAD_ROWS
    )
    fields: str = setting(
        "",
        help="Field map for a file of another layout: question=...,choices=...,answer=...,audio=...[,group=a|b]"
        "[,id=...].",
    )
    audio_root: str = setting("", help="Folder relative audio paths start from ('' = the file's).")


@dataclass
class SynthCommandConfig(CorpusConfig):
    """``grpo-audio synth``: write the synthetic corpus to a folder."""

    output_dir: str = setting(help="Output folder (clips under clips/, the JSONL manifests beside); required.")
