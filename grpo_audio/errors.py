"""The errors a user can cause, told apart from bugs.

A :class:`UserError` (a config, a reward, data or an output folder that cannot be used) names its cause in its
message; the ``grpo-audio`` executable reports it in one line with exit status 2 and keeps its traceback in the
command's log file (``cli.USER_ERRORS``: these and a missing file). Any other exception is a bug and shows its
traceback. Subclasses: ``ConfigError``, ``DataError``, ``LayoutError``, ``AudioError``, ``PromptTooLongError``,
``RewardError``, ``CheckpointError``, ``RunLockedError``.
"""

from __future__ import annotations


class UserError(Exception):
    """An error the user's input causes; the message names the input and what is wrong with it."""


class ConfigError(UserError, ValueError):
    """A configuration could not be loaded or used: the message names the offending key (``grpo_audio.config``
    raises it; defined here so that the modules config imports can raise it too)."""
