"""Training callbacks, one module per job.

- ``logs``: each head's figures grouped under its name (``HeadLogs``, ``TensorBoardLogs``);
- ``checkpoints``: atomic checkpoints and result files, the random generators' state;
- ``guards``: non-finite losses named and stopped or skipped, Ctrl-C checkpointed first;
- ``gradflow``: per-head gradient snapshots into TensorBoard (``GradflowLogger``);
- ``progress``: the compact training display, a bar and one table per epoch (``Progress``);
- ``pictures``: images, targets and predictions as RGB tiles for TensorBoard;
- ``dispatch``: the callback list that spares the host a wait for the device every step
  (``DeviceLogCallbacks``); ``steps``: step counting over several steps per call.
"""

from multiseg.callbacks.checkpoints import (
    AtomicCheckpoint,
    CheckpointWriteError,
    restore_rng_state,
    rng_state,
    save_model_atomic,
    seed_states,
    write_json_atomic,
)
from multiseg.callbacks.dispatch import DeviceLogCallbacks
from multiseg.callbacks.gradflow import GradflowLogger
from multiseg.callbacks.guards import (
    InterruptGuard,
    NonFiniteGuard,
    NonFiniteLoss,
    nonfinite_culprits,
)
from multiseg.callbacks.logs import (
    HeadLogs,
    TensorBoardLogs,
    current_learning_rate,
    epoch_logs,
    nest_logs,
    split_log_key,
    weighted_losses,
)
from multiseg.callbacks.progress import Progress as Progress  # explicit re-export
from multiseg.errors import TrainingInterrupted
from multiseg.runs import latest_checkpoint

__all__ = [
    "AtomicCheckpoint", "CheckpointWriteError", "DeviceLogCallbacks", "GradflowLogger",
    "HeadLogs", "InterruptGuard", "NonFiniteGuard", "NonFiniteLoss", "TensorBoardLogs",
    "TrainingInterrupted",
    "current_learning_rate", "epoch_logs", "latest_checkpoint", "nest_logs",
    "nonfinite_culprits", "restore_rng_state", "rng_state", "save_model_atomic", "seed_states",
    "split_log_key", "weighted_losses", "write_json_atomic",
]
