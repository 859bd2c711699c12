"""Orbax checkpoints of a training run: params, optimizer state and the host-side loop state.

One `CheckpointManager` under `workdir/checkpoints` keeps the last `keep` steps. Orbax writes
each step into a `<step>.orbax-checkpoint-tmp` directory (asynchronously, off the training
thread) and renames it into place only once it is complete, so a run killed mid-write leaves a
temp directory that is never restored (`latest_step` skips it) and is deleted on the next start. Arrays are
restored straight into their target shardings (the abstract tree carries them), so a run resumes
on any mesh. The loop state (step, RNG seed, data cursor, optimizer update count) and the config
ride along as JSON, which is what makes a resumed run continue exactly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(
        self, workdir: str | os.PathLike, keep: int = 3, save_every: int = 1,
        name: str = "checkpoints",
    ):  # fmt: skip
        self.dir = Path(workdir).absolute() / name
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            save_interval_steps=max(1, save_every),
            create=True,
            enable_async_checkpointing=True,
            cleanup_tmp_directories=True,  # the torn writes of a killed run
        )
        self.manager = ocp.CheckpointManager(self.dir, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(
        self, step: int, params, opt_state, loop_state: dict[str, Any], config: dict | None = None,
        force: bool = False,
    ) -> bool:  # fmt: skip
        """Save if `step` is on the interval (or `force`); returns whether it saved."""
        args = dict(
            params=ocp.args.StandardSave(params),
            opt_state=ocp.args.StandardSave(opt_state),
            loop=ocp.args.JsonSave(loop_state),
        )
        if config is not None:
            args["config"] = ocp.args.JsonSave(config)
        saved = self.manager.save(step, args=ocp.args.Composite(**args), force=force)
        return bool(saved)

    def restore(self, step: int, params_like, opt_state_like) -> tuple[Any, Any, dict[str, Any]]:
        """Restore into the structure, dtypes and shardings of the given (abstract) trees."""

        def abstract(tree):
            return jax.tree.map(
                lambda a: jax.ShapeDtypeStruct(
                    a.shape, a.dtype, sharding=getattr(a, "sharding", None)
                ),
                tree,
            )

        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract(params_like)),
                opt_state=ocp.args.StandardRestore(abstract(opt_state_like)),
                loop=ocp.args.JsonRestore(),
            ),
        )
        return out["params"], out["opt_state"], dict(out["loop"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
