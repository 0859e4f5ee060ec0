"""grpo-audio: GRPO reinforcement learning for audio-language models.

Model families live in ``grpo_audio.models``, configuration in ``grpo_audio.config``, rewards in
``grpo_audio.rewards``. The ``grpo-audio`` command line is ``grpo_audio.cli``.
"""

__version__ = "0.1.0"
