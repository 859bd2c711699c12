"""Shared plumbing of the absl entry points: bad input ends in one clear line, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from absl import app, flags, logging

# Errors that describe the user's input (config, flags, files, endpoints), not a bug of ours.
# All of them are ValueError/RuntimeError subclasses with a message that names the culprit.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)


def user_errors() -> tuple[type[BaseException], ...]:
    from agemem_jax.judges import JudgeError

    return (*USER_ERRORS, JudgeError)


_PRINT_CONFIG = flags.DEFINE_bool(
    "print_config", False, "Print the resolved config, each setting with its comment, and exit."
)


def printed_config(config) -> bool:
    """With --print_config, print `config` as `config_lib.describe` shows it; True if printed."""
    if not _PRINT_CONFIG.value:
        return False
    from agemem_jax.config_lib import describe

    print(describe(config))
    return True


def required(holder: flags.FlagHolder):
    """The flag's value; a missing one is a user error (checked after --print_config)."""
    if holder.value is None:
        raise ValueError(f"--{holder.name} is required")
    return holder.value


def run(main: Callable[[list[str]], None]) -> None:
    """`app.run(main)`, with user errors reported as `error: ...` and exit status 2."""

    started = False

    def guarded(argv):
        nonlocal started
        started = True
        try:
            main(argv)
        except user_errors() as e:
            logging.debug("user error", exc_info=True)
            print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
            sys.exit(2)

    try:
        app.run(guarded)
    except (AttributeError, KeyError) as e:
        if started:  # raised by our code, not by flag parsing: a bug, keep the traceback
            raise
        # ml_collections reports an unknown `--config.<key>` while parsing flags.
        print(f"error: bad --config flag: {e}", file=sys.stderr)
        sys.exit(2)
