"""Shared plumbing of the absl entry points: bad input ends in one clear line, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from absl import app, logging

# Errors that describe the user's input (config, flags, files, endpoints), not a bug of ours.
# All of them are ValueError/RuntimeError subclasses with a message that names the culprit.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)


def user_errors() -> tuple[type[BaseException], ...]:
    from agemem_jax.judges import JudgeError

    return (*USER_ERRORS, JudgeError)


def run(main: Callable[[list[str]], None]) -> None:
    """`app.run(main)`, with user errors reported as `error: ...` and exit status 2."""

    def guarded(argv):
        try:
            main(argv)
        except user_errors() as e:
            logging.debug("user error", exc_info=True)
            print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
            sys.exit(2)

    app.run(guarded)
