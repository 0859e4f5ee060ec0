"""The value sets a setting may take, where the config schemas (``config``, which checks them at load) and the
modules that act on them both need the list. A leaf module: the schemas load without the heavy imports of those
modules (torch, vLLM), and those modules import the lists without importing the schemas.
"""

DTYPES = ("float32", "bfloat16", "float16")
MASTER_DTYPES = ("float32", "model")  # model.master_dtype: float32 masters, or the model's own dtype
ENGINES = ("vllm", "hf")  # rollout engines: rollout.build_engine
HF_BATCH_SIZE = 32  # the hf engine's prompts per generate call by default
LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "gspo", "cispo", "sapo", "gmpo")  # loss.policy_loss
IS_MODES = ("none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask")  # loss.policy_loss
SCALE_REWARDS = ("group", "batch", "none")  # advantages.group_advantages
STRATEGIES = ("none", "ddp", "fsdp2")  # parallel.Parallel
