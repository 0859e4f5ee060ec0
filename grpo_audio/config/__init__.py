"""Structured configuration: nested dataclasses, loaded from YAML plus ``key=value`` overrides with omegaconf.

The YAML files mirror these dataclasses exactly. ``fields`` holds what every schema is made of (``setting``,
``Range``, ``ConfigError``); ``run`` the schema of a GRPO run, ``recipe`` a recipe's, ``commands`` those of the
other commands with a typed config; ``load`` reads a YAML file and overrides against a schema, failing at load
time on an unknown key, a wrong type, a missing field or a value outside its choices or range, naming the key.

Every field carries a one-line ``help`` string (``grpo-audio config-help`` prints them all).

Usage::

    cfg = load_config("examples/music_flamingo/tiny.yaml", ["grpo.num_generations=4", "train.lr=1e-5"])
"""

from ..errors import ConfigError
from .commands import EvalCommandConfig, SFTCommandConfig, SynthCommandConfig
from .fields import (
    COUNT,
    DTYPES,
    ENGINES,
    FRACTION,
    HF_BATCH_SIZE,
    MASTER_DTYPES,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY_BELOW_1,
    SHARE,
    Range,
    setting,
    shared_fields,
)
from .load import check_values, describe, help_of, load_config, merge_config, set_list_item, to_object
from .recipe import (
    STAGE_KINDS,
    TARGETS,
    CorpusConfig,
    EvalSettings,
    FinalEvalConfig,
    RecipeConfig,
    RecipeEvalConfig,
    SFTConfig,
    StageConfig,
    SupervisedSettings,
    SyntheticConfig,
    checked_answer_formats,
)
from .run import (
    DataConfig,
    GRPOConfig,
    LoraConfig,
    ModelConfig,
    ParallelConfig,
    RewardSpec,
    RolloutConfig,
    RunConfig,
    TrainConfig,
    check_model_path,
    check_parallel,
)

__all__ = [
    "COUNT",
    "DTYPES",
    "ENGINES",
    "FRACTION",
    "HF_BATCH_SIZE",
    "MASTER_DTYPES",
    "NON_NEGATIVE",
    "POSITIVE",
    "PROBABILITY_BELOW_1",
    "SHARE",
    "STAGE_KINDS",
    "TARGETS",
    "ConfigError",
    "CorpusConfig",
    "DataConfig",
    "EvalCommandConfig",
    "EvalSettings",
    "FinalEvalConfig",
    "GRPOConfig",
    "LoraConfig",
    "ModelConfig",
    "ParallelConfig",
    "Range",
    "RecipeConfig",
    "RecipeEvalConfig",
    "RewardSpec",
    "RolloutConfig",
    "RunConfig",
    "SFTCommandConfig",
    "SFTConfig",
    "StageConfig",
    "SupervisedSettings",
    "SynthCommandConfig",
    "SyntheticConfig",
    "TrainConfig",
    "check_model_path",
    "check_parallel",
    "check_values",
    "checked_answer_formats",
    "describe",
    "help_of",
    "load_config",
    "merge_config",
    "set_list_item",
    "setting",
    "shared_fields",
    "to_object",
]
