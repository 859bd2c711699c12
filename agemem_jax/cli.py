"""Shared plumbing of the absl entry points: bad input ends in one clear line, not a traceback."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from absl import app, flags, logging

# Errors that describe the user's input (config, flags, files, endpoints) or the machine (a
# full disk, a read-only folder), not a bug of ours; each message names the culprit.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


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


def workdir(path: str | os.PathLike) -> Path:
    """`path`, created if needed and proven writable before any work starts, so an unusable
    workdir is one clear error instead of a crash after the model has loaded."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=p):
            pass
    except OSError as e:
        raise ValueError(f"--workdir={path} is not a writable folder ({e.strerror or e})") from None
    return p


def _one_line(message: str) -> str:
    """A flag error's gist: ml_collections embeds the config file's traceback in its message."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else message
    errors = [ln for ln in lines if ln.split(":")[0].endswith(("Error", "Exception"))]
    return errors[-1] if errors else lines[-1]


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad flag or config file reported as one `error:` line."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"error: bad flag: {_one_line(str(e))}", file=sys.stderr)
        sys.exit(2)


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
        app.run(guarded, flags_parser=_parse_flags)
    except (AttributeError, KeyError) as e:
        if started:  # raised by our code, not by flag parsing: a bug, keep the traceback
            raise
        # ml_collections reports an unknown `--config.<key>` while parsing flags.
        print(f"error: bad --config flag: {e}", file=sys.stderr)
        sys.exit(2)
