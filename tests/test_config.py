"""Config: YAML + overrides against the dataclass schema; typos and wrong types fail naming the key."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest

from grpo_audio.config import ConfigError, RunConfig, describe, load_config

GOOD = """
output_dir: runs/x
model:
  path: /ckpt
  family: music_flamingo
grpo:
  num_generations: 4
rewards:
  - name: format
    weight: 0.5
  - name: mcq_accuracy
    kwargs: {fallback: false}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_good_yaml_and_overrides(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), ["grpo.beta=0.04", "train.lr=2e-6", "rollout.engine=hf"])
    assert isinstance(cfg, RunConfig)
    assert cfg.model.family == "music_flamingo" and cfg.grpo.num_generations == 4
    assert cfg.grpo.beta == 0.04 and cfg.train.lr == 2e-6 and cfg.rollout.engine == "hf"
    assert [r.name for r in cfg.rewards] == ["format", "mcq_accuracy"]
    assert cfg.rewards[0].weight == 0.5 and cfg.rewards[1].kwargs == {"fallback": False}


def test_an_override_sets_a_field_of_a_list_item(tmp_path):
    """``rewards[1].weight=2`` and ``rewards.1.weight=2`` set one item's field and leave the others as the YAML
    has them; a bad index, key, type or value fails naming the key, as in a YAML file."""
    from grpo_audio.config import RecipeConfig

    path = write(tmp_path, GOOD)
    cfg = load_config(path, ["rewards[1].weight=2", "rewards.1.kwargs={fallback: true}", "grpo.beta=0.04"])
    assert [r.weight for r in cfg.rewards] == [0.5, 2.0] and cfg.grpo.beta == 0.04
    assert cfg.rewards[0].kwargs == {} and cfg.rewards[1].kwargs == {"fallback": True}
    tiny = Path(__file__).resolve().parents[1] / "examples" / "music_flamingo" / "tiny.yaml"
    recipe = load_config(tiny, ["stages.1.epochs=2", "stages[2].lr=0.01"], RecipeConfig)
    committed = load_config(tiny, [], RecipeConfig)
    assert (
        (recipe.stages[1].epochs, recipe.stages[2].lr)
        == (2, 0.01)
        != (committed.stages[1].epochs, committed.stages[2].lr)
    )
    assert [dataclasses.replace(s, epochs=0, lr=0) for s in recipe.stages] == [
        dataclasses.replace(s, epochs=0, lr=0) for s in committed.stages
    ]
    for override, why in [
        ("rewards[2].weight=1", r"'rewards\[2\].weight': 'rewards' has 2 items, no item 2"),
        ("rewards.1.wieght=1", r"unknown config key 'rewards\[1\].wieght'. Did you mean 'weight'"),
        ("rewards[1].weight=heavy", r"'rewards\[1\].weight' has the wrong type"),
        ("rewards[1]=x", r"'rewards\[1\]': set a list item's fields one by one"),
    ]:
        with pytest.raises(ConfigError, match=why):
            load_config(path, [override])
    with pytest.raises(ConfigError, match=r"'stages\[1\].evaluate' has the wrong type: 2 is not true or false"):
        load_config(tiny, ["stages.1.evaluate=2"], RecipeConfig)
    with pytest.raises(ConfigError, match=r"'stages\[1\].kind' = 'bogus' is not one of"):
        load_config(tiny, ["stages[1].kind=bogus"], RecipeConfig)


def test_typo_key_names_key_and_valid_choices(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, GOOD.replace("num_generations", "num_generation")))
    msg = str(e.value)
    assert "grpo.num_generation" in msg and "Did you mean 'num_generations'" in msg and "epsilon_high" in msg


def test_typo_in_list_item_and_top_level(tmp_path):
    with pytest.raises(ConfigError, match=r"rewards\[1\]\.kwrgs.*Did you mean 'kwargs'"):
        load_config(write(tmp_path, GOOD.replace("kwargs:", "kwrgs:")))
    with pytest.raises(ConfigError, match="'seeed'.*Did you mean 'seed'"):
        load_config(write(tmp_path, GOOD + "seeed: 3\n"))


def test_wrong_type_names_key(tmp_path):
    with pytest.raises(ConfigError, match=r"grpo\.num_generations.*wrong type"):
        load_config(write(tmp_path, GOOD.replace("num_generations: 4", "num_generations: four")))
    with pytest.raises(ConfigError, match=r"train\.max_steps"):
        load_config(write(tmp_path, GOOD), ["train.max_steps=many"])


TINY = Path(__file__).resolve().parents[1] / "examples" / "music_flamingo" / "tiny.yaml"

# Every number of a recipe (a GRPO run's settings and the recipe's own) with a natural range, and the range.
RANGES = {
    "seed": ">= 0",
    "lora.r": ">= 1",
    "lora.alpha": "> 0",
    "lora.dropout": "[0, 1)",
    "data.max_audio_seconds": ">= 0",
    "rollout.max_new_tokens": ">= 1",
    "rollout.temperature": ">= 0",
    "rollout.top_p": "(0, 1]",
    "rollout.top_k": ">= -1",
    "rollout.gpu_memory_utilization": "(0, 1]",
    "rollout.tensor_parallel_size": ">= 1",
    "rollout.max_model_len": ">= 1",
    "grpo.num_generations": ">= 2",
    "grpo.beta": ">= 0",
    "grpo.epsilon": ">= 0",
    "grpo.epsilon_high": ">= 0",
    "grpo.num_iterations": ">= 1",
    "grpo.std_floor": ">= 0",
    "grpo.negative_weight": ">= 0",
    "grpo.replay_coef": ">= 0",
    "grpo.replay_rows": ">= 1",
    "grpo.max_resample_rounds": ">= 0",
    "grpo.is_cap": "> 0",
    "grpo.cispo_max_ratio": "> 0",
    "grpo.sapo_temperature_pos": "> 0",
    "grpo.sapo_temperature_neg": "> 0",
    "train.lr": "> 0",
    "train.max_steps": ">= 1",
    "train.prompts_per_step": ">= 1",
    "train.warmup_ratio": "[0, 1]",
    "train.max_grad_norm": "> 0",
    "train.micro_batch_size": ">= 1",
    "train.weight_decay": ">= 0",
    "train.eval_every": ">= 0",
    "train.eval_rows": ">= 0",
    "train.eval_temperature": ">= 0",
    "train.eval_generations": ">= 1",
    "train.samples_per_eval": ">= 0",
    "train.save_every": ">= 0",
    "train.keep_last": ">= 1",
    "train.max_skipped_steps": ">= 0",
    "audio_cache_gb": ">= 0",
    "synthetic.n": ">= 1",
    "synthetic.n_eval": ">= 0",
    "synthetic.n_rl": ">= 0",
    "synthetic.seed": ">= 0",
    "synthetic.tempo_step": ">= 1",
    "eval.max_rows": ">= 0",
    "eval.max_new_tokens": ">= 1",
    "eval.batch_size": ">= 1",
    "eval.samples": ">= 0",
    "eval.final[0].max_rows": ">= 0",
    "stages[0].epochs": ">= 0",
    "stages[0].max_steps": ">= -1",
    "stages[0].lr": "> 0",
    "stages[0].batch_size": ">= 1",
    "stages[0].replay_ratio": ">= 0",
}


def _values(within: str, integer: bool) -> tuple[list[str], list[str]]:
    """Override texts outside ``within`` (its open ends included) and at its closed ends (just inside an open end),
    for an integer or a float field."""
    step = 1 if integer else 0.5
    inside = 1 if integer else 1e-6
    if within[0] in "<>":
        op, bound = within.split()
        low = int(bound) if integer else float(bound)
        if op == ">=":
            return [str(low - step)], [str(low)]
        return [str(low), str(low - step)], [str(low + inside)]
    low, high = (float(x) for x in within[1:-1].split(", "))
    bad = [str(low - step), str(high + step)] + [str(low)] * (within[0] == "(") + [str(high)] * (within[-1] == ")")
    good = [
        str(low) if within[0] == "[" else str(low + inside),
        str(high) if within[-1] == "]" else str(high - inside),
    ]
    return bad, good


def _get(cfg, key: str):
    for part in re.sub(r"\[0\]", ".0", key).split("."):
        cfg = cfg[int(part)] if part.isdigit() else getattr(cfg, part)
    return cfg


def _ranged_fields(schema, prefix=""):
    """``{key: range}`` of every field with a range, the first item of each list standing for all its items."""
    from grpo_audio.config.load import _resolve_field_type

    out = {}
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        if "range" in f.metadata:
            out[f"{prefix}{f.name}"] = str(f.metadata["range"])
        sub = _resolve_field_type(schema, f.name)
        if sub is not None:
            out.update(
                _ranged_fields(sub, f"{prefix}{f.name}" + ("." if dataclasses.is_dataclass(hints[f.name]) else "[0]."))
            )
    return out


def test_every_number_with_a_natural_range_declares_it():
    from grpo_audio.config import RecipeConfig

    assert _ranged_fields(RecipeConfig) == RANGES


@pytest.mark.parametrize("key", sorted(RANGES))
def test_a_value_outside_its_range_is_refused_when_read_and_its_ends_are_taken(key):
    """The range of a number is part of its field: a value outside it is refused when the config is read, in one
    line naming the key, the value and the range (``rollout.gpu_memory_utilization=1.5`` used to be taken, a
    negative ``negative_weight`` failed only at the first GRPO step); a value at a closed end is taken, and
    ``describe`` shows the range."""
    from grpo_audio.config import RecipeConfig

    within = RANGES[key]
    integer = isinstance(_get(load_config(TINY, [], RecipeConfig), key), int)
    bad, good = _values(within, integer)
    if not integer:  # NaN compares False with every bound: it used to pass them all (and train on nothing)
        with pytest.raises(ConfigError, match=rf"'{re.escape(key)}' = nan is outside its range, "):
            load_config(TINY, [f"{key}=nan"], RecipeConfig)
    for value in bad:
        with pytest.raises(ConfigError) as e:
            load_config(TINY, [f"{key}={value}"], RecipeConfig)
        found = re.fullmatch(
            rf"config key '{re.escape(key)}' = (\S+) is (below|above) its range, (.+)\.", str(e.value)
        )
        assert found, str(e.value)
        assert float(found[1]) == float(value) and found[3] == within
    for value in good:
        assert _get(load_config(TINY, [f"{key}={value}"], RecipeConfig), key) == pytest.approx(float(value))
    shown = re.sub(r"\[0\]", "[]", key)
    expect = f"[{within}]" if within[0] in "<>" else f"[in {within}]"
    assert any(line.startswith(f"{shown} (") and line.endswith(expect) for line in describe(RecipeConfig))


def test_an_empty_value_on_the_command_line_empties_a_text_or_list_field(tmp_path):
    """``data.eval=`` disables evaluation as its help says (omegaconf alone reads it as null and fails), and so
    for every text field; a list field becomes empty; a number, a flag or a mapping (whose overrides merge into it)
    needs a value."""
    from grpo_audio.config import RecipeConfig

    path = write(tmp_path, GOOD.replace("model:", "data: {eval: held_out.jsonl, train_tasks: [key]}\nmodel:"))
    assert load_config(path).data.eval == "held_out.jsonl"
    cfg = load_config(path, ["data.eval=", "data.train_tasks=", "parallel.compute_dtype="])
    assert (cfg.data.eval, cfg.data.train_tasks, cfg.parallel.compute_dtype) == ("", [], "")
    recipe = load_config(TINY, ["stages[2].replay=", "tiny_model="], RecipeConfig)
    assert recipe.stages[2].replay == "" and recipe.tiny_model == ""
    assert load_config(TINY, [], RecipeConfig).stages[2].replay  # the premise: the file sets it
    for key in ("train.lr", "seed", "lora.enabled", "rewards[1].kwargs", "model"):
        with pytest.raises(ConfigError, match=rf"^command line: config key '{re.escape(key)}' needs a value"):
            load_config(path, [f"{key}="])
    with pytest.raises(ConfigError, match="'model.family' = '' is not one of"):
        load_config(path, ["model.family="])


@pytest.mark.parametrize(
    "text, where, problem",
    [
        ("output_dir: x\nmodel: {path: p, family: [qwen2_audio}\n", "cfg.yaml:2:", "did not find expected"),
        ("output_dir: x\n  seed: 2\n", "cfg.yaml:2:7", "mapping values are not allowed"),
        ("seed: 1\nseed: 2\n", "cfg.yaml:2:1", "found duplicate key seed"),
        ("output_dir: x\n\tseed: 2\n", "cfg.yaml:2:", "found a tab character"),
    ],
)
def test_a_file_that_is_not_yaml_fails_naming_the_file_and_line(tmp_path, text, where, problem):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    message = str(e.value)
    assert "\n" not in message and problem in message and "not valid YAML" in message
    assert message.startswith(str(tmp_path / where)), message


def test_a_file_or_value_that_is_no_mapping_of_keys_fails_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=r"cfg.yaml: a config file is a mapping of keys \(key: value\), not a list"):
        load_config(write(tmp_path, "- output_dir: x\n"))
    with pytest.raises(ConfigError, match=r"cfg.yaml: cannot be read as a config"):
        load_config(write(tmp_path, "3\n"))
    with pytest.raises(ConfigError, match=r"^command line: config key 'data.train_tasks': '\[key,' is not valid YAML"):
        load_config(write(tmp_path, GOOD), ["data.train_tasks=[key,"])


def test_bad_choice_names_key_and_choices(tmp_path):
    with pytest.raises(ConfigError, match=r"grpo\.loss_type.*'ppo'.*grpo, dr_grpo, dapo, bnpo, gspo"):
        load_config(write(tmp_path, GOOD), ["grpo.loss_type=ppo"])
    with pytest.raises(ConfigError, match=r"'sappo' is not one of: .*\. Did you mean 'sapo'\?"):
        load_config(write(tmp_path, GOOD), ["grpo.loss_type=sappo"])
    with pytest.raises(ConfigError, match=r"model\.family.*whisper.*music_flamingo"):
        load_config(write(tmp_path, GOOD.replace("family: music_flamingo", "family: whisper")))


def test_missing_required_field(tmp_path):
    with pytest.raises(ConfigError, match=r"missing required.*model\.path"):
        load_config(write(tmp_path, GOOD.replace("  path: /ckpt\n", "")))
    with pytest.raises(ConfigError, match=r"missing required.*output_dir"):
        load_config(write(tmp_path, GOOD.replace("output_dir: runs/x\n", "")))


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(write(tmp_path, GOOD), ["grpo.beta"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def _all_dataclasses(cls, seen=None):
    seen = seen if seen is not None else set()
    if cls in seen:
        return seen
    seen.add(cls)
    for t in typing.get_type_hints(cls).values():
        for cand in (t, *getattr(t, "__args__", ())):
            if dataclasses.is_dataclass(cand):
                _all_dataclasses(cand, seen)
    return seen


def test_every_field_has_a_help_string():
    classes = _all_dataclasses(RunConfig)
    assert len(classes) >= 8
    for cls in classes:
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help", "").strip(), f"{cls.__name__}.{f.name} has no help"
    lines = describe()
    assert any(line.startswith("grpo.loss_type (str, 'dapo')") and "gspo" in line for line in lines)
    assert any(line.startswith("rewards[].weight") for line in lines)


def test_every_example_yaml_loads_against_the_schema():
    from pathlib import Path

    examples = sorted((Path(__file__).resolve().parents[1] / "examples").rglob("*.yaml"))
    assert examples
    from omegaconf import OmegaConf

    from grpo_audio.config import RecipeConfig

    for path in examples:
        schema = RecipeConfig if "stages" in OmegaConf.load(path) else RunConfig
        cfg = load_config(path, schema=schema)
        assert cfg.rewards and cfg.model.family


def test_reward_settings_are_checked_at_load(tmp_path):
    """A reward's ``kwargs`` are checked against its factory when the config loads, not inside the trainer."""
    with pytest.raises(ConfigError, match=r"rewards\[1\]: reward 'mcq_accuracy' takes no setting 'strict'; its "
                       "settings: answer_tag, fallback, prefer"):  # fmt: skip
        load_config(write(tmp_path, GOOD.replace("fallback: false", "strict: true")))
    with pytest.raises(ConfigError, match=r"rewards\[1\]: reward 'mcq_accuracy': prefer must be one of"):
        load_config(write(tmp_path, GOOD.replace("fallback: false", "prefer: number")))
    with pytest.raises(ConfigError, match=r"rewards\[0\]: unknown reward 'fromat'"):
        load_config(write(tmp_path, GOOD.replace("name: format", "name: fromat")))
    with pytest.raises(ConfigError, match=r"rewards\[0\]: cannot load reward 'no_such_module:f'"):
        load_config(write(tmp_path, GOOD.replace("name: format", "name: no_such_module:f")))
    custom = GOOD.replace("name: format", "name: grpo_audio.rewards.music_theory:MusicTheory")
    good = custom.replace("    weight: 0.5\n", "    weight: 0.5\n    kwargs: {tempo_tolerance: 0.1}\n", 1)
    assert load_config(write(tmp_path, good)).rewards[0].kwargs == {"tempo_tolerance": 0.1}
    bad = custom.replace("    weight: 0.5\n", "    weight: 0.5\n    kwargs: {tolerance: 0.1}\n", 1)
    with pytest.raises(ConfigError, match=r"rewards\[0\]: reward '.*:MusicTheory' takes no setting 'tolerance'"):
        load_config(write(tmp_path, bad))


def _fields(schema, prefix=""):
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f.name


def test_every_config_field_is_read_somewhere():
    """A field nothing reads is a setting that silently does nothing: each one's name must be read as an attribute
    (``.name``) somewhere in the package outside config.py."""
    from grpo_audio.config import RecipeConfig

    package = Path(__file__).resolve().parents[1] / "grpo_audio"
    source = "\n".join(p.read_text() for p in package.rglob("*.py") if p.name != "config.py")
    unread = sorted(
        {key for schema in (RunConfig, RecipeConfig) for key, name in _fields(schema) if f".{name}" not in source}
    )
    assert unread == []


def test_user_rewards_by_path(tmp_path, monkeypatch):
    """A reward function (TRL's signature) takes no settings; a class is built, with or without settings."""
    (tmp_path / "user_rewards.py").write_text(
        "def noisy(prompts, completions, scale=1.0, **kwargs):\n    return [scale] * len(completions)\n"
        "class Fixed:\n    def __init__(self, value=1.0):\n        self.value = value\n"
        "    def __call__(self, prompts, completions, **kwargs):\n        return [self.value] * len(completions)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"rewards\[0\]: reward 'user_rewards:noisy' is a reward function"):
        load_config(write(tmp_path, GOOD.replace("name: format", "name: user_rewards:noisy\n    kwargs: {scael: 2}")))
    cfg = load_config(write(tmp_path, GOOD.replace("name: format", "name: user_rewards:Fixed")))
    from grpo_audio.rewards import RewardSet

    rewards = RewardSet.from_specs(cfg.rewards[:1])
    assert rewards(["p"], ["c"]).total == [0.5]  # weight 0.5 x Fixed() = 1.0
    with pytest.raises(ConfigError, match="takes no setting 'valeu'"):
        load_config(write(tmp_path, GOOD.replace("name: format", "name: user_rewards:Fixed\n    kwargs: {valeu: 2}")))


def test_a_reward_function_that_cannot_take_the_call_is_refused_at_load(tmp_path, monkeypatch):
    """A user's reward is called as f(prompts=..., completions=..., **columns): one with another signature fails
    when the config loads, naming it and its signature, not after the engine has started."""
    (tmp_path / "odd_rewards.py").write_text(
        "def text_only(text):\n    return [0.0]\n"
        "def no_columns(prompts, completions):\n    return [0.0] * len(completions)\n"
        "def named_columns(prompts, completions, id, answer, choices, metadata, caption, thinking, task):\n"
        "    return [0.0] * len(completions)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for name, why in (("text_only", "missing a required argument: 'text'"), ("no_columns", "unexpected keyword")):
        with pytest.raises(ConfigError, match=rf"rewards\[0\]: reward 'odd_rewards:{name}' cannot be called") as e:
            load_config(write(tmp_path, GOOD.replace("name: format", f"name: odd_rewards:{name}")))
        assert why in str(e.value) and f"{name}(" in str(e.value)
    # every column named, no **kwargs: the call binds, so it loads
    load_config(write(tmp_path, GOOD.replace("name: format", "name: odd_rewards:named_columns")))


def test_parallel_settings_are_checked_before_anything_loads(monkeypatch, tmp_path):
    """What the processes cannot run fails at once, as a config error naming the setting: a batch that does not
    split over the processes, ``none`` under torchrun, FSDP2's settings with DDP, offload without a GPU; and a
    recipe checks its GRPO stages before its first stage."""
    from grpo_audio.config import ConfigError, RecipeConfig, check_parallel
    from grpo_audio.recipe import Recipe

    base = ["output_dir=x", "model.path=m", "model.family=music_flamingo", "train.prompts_per_step=3"]
    with pytest.raises(ConfigError, match="prompts_per_step=3 does not split over 2 processes"):
        check_parallel(load_config(None, base), world_size=2)
    check_parallel(load_config(None, base), world_size=1)
    with pytest.raises(ConfigError, match="need parallel.strategy=fsdp2 \\(it is 'ddp'\\)"):
        check_parallel(load_config(None, [*base, "parallel.compute_dtype=bfloat16"]), world_size=1)
    with pytest.raises(ConfigError, match="cpu_offload needs GPUs"):  # this suite runs without one
        check_parallel(load_config(None, [*base, "parallel.strategy=fsdp2", "parallel.cpu_offload=true"]), 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="launched on 2 processes but parallel.strategy is 'none'"):
        check_parallel(load_config(None, [*base, "train.prompts_per_step=4", "parallel.strategy=none"]))
    stages = "[{name: grpo, kind: grpo, data: x.jsonl, grpo_overrides: {train.prompts_per_step: 3}}]"
    settings = [f"output_dir={tmp_path / 'out'}", "model.family=music_flamingo", "model.path=unused",
                "tiny_model=test", "train.prompts_per_step=4", f"stages={stages}"]  # fmt: skip
    recipe = load_config(None, settings, schema=RecipeConfig)
    with pytest.raises(ConfigError, match="prompts_per_step=3 does not split over 2 processes"):
        Recipe(recipe)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["2", "0", "-1", "maybe", "1.0"])
def test_a_true_or_false_setting_takes_true_or_false_only(tmp_path, value):
    """omegaconf alone reads 2 as true and 0 as false; a flag given a number fails naming the key, on the command
    line and inside a list item of a YAML file."""
    from grpo_audio.config import RecipeConfig

    tiny = Path(__file__).resolve().parents[1] / "examples/music_flamingo/tiny.yaml"
    with pytest.raises(ConfigError, match=rf"command line: config key 'eval.base' has the wrong type: .*{value}"):
        load_config(tiny, [f"eval.base={value}"], schema=RecipeConfig)
    text = tiny.read_text().replace("evaluate: false}", f"evaluate: {value}}}")
    assert text != tiny.read_text()
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"config key 'stages\[0\].evaluate' has the wrong type"):
        load_config(tmp_path / "r.yaml", schema=RecipeConfig)
    assert load_config(tiny, ["eval.base=true"], schema=RecipeConfig).eval.base is True
