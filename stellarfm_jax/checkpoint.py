"""Orbax checkpoints for training (the only module that imports Orbax; DESIGN §4, §8).

A checkpoint is saved at the end of an epoch under step = number of completed epochs, holding the
TrainState and a small JSON record (epoch, metrics). Retention: the latest ``keep`` checkpoints plus
the best one by the validation metric (lower is better). Restoring goes through an abstract target;
a checkpoint that fails to restore (corrupted, truncated) is reported and the previous one is used.
"""

from __future__ import annotations

import pathlib
from typing import Callable

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


class Checkpointer:
    def __init__(self, directory, keep: int = 3, best_metric: str = "val_loss", log: Callable = print):
        self.directory = pathlib.Path(directory).resolve()
        self.best_metric = best_metric
        self.log = log
        preservation = policies.AnyPreservationPolicy(
            [
                policies.LatestN(n=keep),
                # BestN keeps the largest metric unless reverse=True; our metrics are "lower is better".
                policies.BestN(get_metric_fn=lambda m: m[best_metric], reverse=True, n=1,
                               keep_checkpoints_without_metrics=False),
            ]
        )
        options = ocp.CheckpointManagerOptions(preservation_policy=preservation, create=True,
                                               enable_async_checkpointing=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, epoch: int, state, record: dict, metrics: dict | None = None) -> None:
        """Save the state after ``epoch`` completed epochs; ``metrics`` (with ``best_metric``) ranks it."""
        self.manager.save(
            epoch,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)),
            metrics=metrics if metrics and self.best_metric in metrics else None,
            force=True,
        )

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def restore_latest(self, abstract_state):
        """(epoch, state, record) from the newest readable checkpoint, or None if there is none."""
        unreadable = []
        for epoch in reversed(self.steps()):
            try:
                restored = (epoch, *self.restore(epoch, abstract_state))
            except Exception as err:  # noqa: BLE001 - any unreadable checkpoint falls back to the previous one
                self.log(f"checkpoint for epoch {epoch} in {self.directory} is unreadable "
                         f"({type(err).__name__}: {str(err)[:200]}); falling back to the previous one")
                unreadable.append(epoch)
                continue
            self._discard(unreadable)
            return restored
        self._discard(unreadable)
        return None

    def _discard(self, epochs) -> None:
        """Remove unreadable checkpoints so that training can save those epochs again."""
        for epoch in epochs:
            self.manager.delete(epoch)
            self.log(f"removed the unreadable checkpoint for epoch {epoch}")

    def restore(self, epoch: int, abstract_state):
        restored = self.manager.restore(
            epoch,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), record=ocp.args.JsonRestore()),
        )
        return restored.state, restored.record

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree):
    """ShapeDtypeStruct skeleton (with shardings) of a pytree of arrays, for restoring."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
