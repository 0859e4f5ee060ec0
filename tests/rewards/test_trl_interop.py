"""TRL compatibility both ways: TRL's reward functions run in our RewardSet, ours run in trl.GRPOTrainer."""

from __future__ import annotations

import pytest
import torch

from grpo_audio.rewards import RewardSet, format_reward, load_reward, mcq_accuracy, music_theory


def test_trl_rewards_run_where_ours_do():
    from trl.rewards import think_format_reward

    completions = [
        [{"role": "assistant", "content": "<think>C E G</think><answer>A</answer>"}],
        [{"role": "assistant", "content": "A"}],
    ]
    rs = RewardSet([(think_format_reward, 1.0), (format_reward, 1.0), (mcq_accuracy, 2.0)])
    out = rs(["q1", "q2"], completions, choices=[["C major", "D minor"]] * 2, answer=["A", "A"], id=["a", "b"])
    assert out.components["think_format_reward"] == [1.0, 0.0]
    assert out.total == [1.0 + 1.0 + 2.0, 2.0]
    loaded = load_reward("trl.rewards:think_format_reward")
    assert loaded is think_format_reward
    assert RewardSet.from_specs([{"name": "trl.rewards:think_format_reward", "weight": 0.5}])(
        ["q"], completions[:1]
    ).total == [0.5]


@pytest.fixture(scope="module")
def tiny_text_model(tmp_path_factory):
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    from grpo_audio.models.tiny import train_tokenizer

    path = tmp_path_factory.mktemp("tiny_text")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(0), eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left"
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=(len(tok) + 63) // 64 * 64,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=1,
            num_attention_heads=1,
            num_key_value_heads=1,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.pad_token_id,
        )
    )
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_our_rewards_in_trl_grpo_trainer(tiny_text_model, tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    ds = Dataset.from_list(
        [
            {
                "prompt": "Which chord is played? (A) C major (B) A minor",
                "choices": ["C major", "A minor"],
                "answer": "B",
                "metadata": {"key": "A minor"},
            },
            {
                "prompt": "What is the key? (A) C major (B) G major",
                "choices": ["C major", "G major"],
                "answer": "A",
                "metadata": {"key": "C major"},
            },
        ]
        * 2
    )
    args = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        max_steps=1,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=0,
    )
    trainer = GRPOTrainer(
        model=str(tiny_text_model),
        reward_funcs=[format_reward, mcq_accuracy, music_theory],
        args=args,
        train_dataset=ds,
    )
    trainer.train()
    assert trainer.state.global_step == 1
    logged = {k for entry in trainer.state.log_history for k in entry}
    for name in ("format", "mcq_accuracy", "music_theory"):
        assert f"rewards/{name}/mean" in logged
