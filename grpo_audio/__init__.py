"""grpo-audio: GRPO reinforcement learning for audio-language models.

The top-level modules own one stage of the data flow each: ``trainer`` (the GRPO loop), ``advantages``, ``loss``
and ``logprobs`` (its maths), ``sft`` and ``evaluate`` (the other stages), ``audio`` and ``audio_cache`` (clips
and what is computed from them), ``checkpoint``, ``metrics``, ``logs``, ``config`` and ``cli``. The packages:
``models`` (family adapters), ``data`` (rows and files), ``rollout`` (engines), ``rewards`` and ``recipe``.
"""

__version__ = "0.1.0"
