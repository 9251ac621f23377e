"""Training a recipe into its run directory: ``recipe.yaml`` (resolved), ``checkpoints/``
(atomic; the same call resumes), ``logs/`` (TensorBoard), ``metrics.json`` and ``model.keras``.

``multiseg.train`` is the command (and ``multiseg.train.train`` the same function, imported
on first use): it reads the recipe before Keras starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass

import keras
import numpy as np

from multiseg import load_model
from multiseg.batchnorm import (
    MODE_GAP_MARGIN,
    PreciseBatchNorm,
    has_mode_dependent_layers,
    mode_gap,
    mode_gap_warning,
)
from multiseg.callbacks import (
    AtomicCheckpoint,
    DeviceLogCallbacks,
    GradflowLogger,
    HeadLogs,
    InterruptGuard,
    NonFiniteGuard,
    NonFiniteLoss,
    Progress,
    TensorBoardLogs,
    nest_logs,
    restore_rng_state,
    save_model_atomic,
    weighted_losses,
    write_json_atomic,
)
from multiseg.data import DataError, build_data
from multiseg.distribute.engines import (
    check_batches,
    check_replicas,
    distribution_callbacks,
    distribution_scope,
    is_chief,
    process_feed,
    worker_run,
)
from multiseg.errors import TrainingInterrupted
from multiseg.headkinds import HEAD_KINDS
from multiseg.losses import check_targets
from multiseg.metrics import LossTerm
from multiseg.models.build import (
    build_model,
    build_training_variables,
    compile_model,
    head_losses,
    head_metrics,
    set_step_options,
    set_steps_per_call,
    steps_per_call,
)
from multiseg.runs import (
    FIGURES_ABOUT,
    check_run_dir,
    describe,
    final_summary,
    finished_run_text,
    latest_checkpoint,
    prepare_run_dir,
    read_json,
)
from multiseg.startup import compile_cache, set_random_seed
from multiseg.weighting.model import inference_model


@dataclass
class TrainResult:
    model: keras.Model
    run_dir: str
    metrics: dict
    epochs_run: int


def _finished_run(recipe, verbose) -> TrainResult:
    """The records of a run that already reached train.epochs, read and left untouched."""
    run_dir = recipe.output
    metrics = read_json(os.path.join(run_dir, "metrics.json"))
    if verbose:
        print(finished_run_text(recipe, metrics), flush=True)
    model = load_model(os.path.join(run_dir, "model.keras"))
    return TrainResult(model=model, run_dir=run_dir, metrics=metrics, epochs_run=0)


@contextlib.contextmanager
def dtype_policy(name: str):
    """Layers built inside compute in ``name`` (``mixed_bfloat16``: bfloat16 math, float32
    variables); losses and metrics keep float32, their default. Restores the previous policy,
    so that nothing built later (other models, tests) inherits it."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


@contextlib.contextmanager
def op_determinism(enabled: bool):
    """TensorFlow's op determinism (``train.deterministic``) for one run. It is a setting of
    the whole process: left on, it would slow every later run in it and silently turn off
    their XLA (Keras declines ``jit_compile`` under it)."""
    if not enabled or keras.backend.backend() != "tensorflow":
        yield
        return
    from tensorflow.python.framework.config import (
        disable_op_determinism,
        enable_op_determinism,
        is_op_determinism_enabled,
    )

    before = is_op_determinism_enabled()
    enable_op_determinism()
    try:
        yield
    finally:
        if not before:
            disable_op_determinism()


class _KerasStepRetracing(logging.Filter):
    """TensorFlow counts the traces of Keras's step functions across models (each run builds
    its own), so a process's second run warns of "frequent retracing" that is only a new
    model's first trace; the warning suggests a bug the user does not have."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("triggered tf.function retracing" in message
                    and "TensorFlowTrainer." in message)


@contextlib.contextmanager
def keras_retracing_warnings_hidden():
    """For one run: TensorFlow's retracing warnings about Keras's own step functions."""
    if keras.backend.backend() != "tensorflow":
        yield
        return
    logger, hidden = logging.getLogger("tensorflow"), _KerasStepRetracing()
    logger.addFilter(hidden)
    try:
        yield
    finally:
        logger.removeFilter(hidden)


def _preview(data, heads: list[str], count: int = 4) -> tuple:
    """The first validation batch and the targets of its first ``count`` images, which
    TensorBoard draws each epoch."""
    images, targets = data.val[0]
    return np.asarray(images), {h: np.asarray(targets[h][:count]) for h in heads}, heads


def train(recipe, *, fresh: bool = False, verbose: int | str = "auto",
          recipe_path: str | None = None, extra_callbacks=()) -> TrainResult:
    """Trains ``recipe`` into its run directory, resuming from its last checkpoint if any.
    Everything that can be refused (the run directory, the data, the first batch's targets)
    is checked before the directory is written or, with ``fresh``, emptied.

    ``verbose``: any true value prints the start-up summary, the compact progress display
    (``multiseg.callbacks.Progress``) and the final figures; 0 prints nothing.

    Under ``train.distribute`` every process calls this; only the chief writes the run
    directory and prints (``multiseg.distribute``)."""
    with distribution_scope(recipe.train.distribute) as replicas, \
            worker_run(recipe, fresh=fresh) as (own, own_fresh), \
            op_determinism(recipe.train.deterministic), keras_retracing_warnings_hidden():
        check_replicas(recipe, replicas)
        return _train(own, fresh=own_fresh, verbose=verbose if is_chief() else 0,
                      recipe_path=recipe_path,
                      extra_callbacks=(*distribution_callbacks(recipe, replicas, verbose),
                                       *extra_callbacks))


def _train(recipe, *, fresh: bool, verbose: int | str, recipe_path: str | None,
           extra_callbacks) -> TrainResult:
    state = check_run_dir(recipe, fresh=fresh)
    if state.complete:
        return _finished_run(recipe, verbose)
    compile_cache()  # before anything compiles (the model's initializers on JAX)
    set_random_seed(recipe.seed)
    # When the summary is printed, the report is part of it; otherwise it goes to the log.
    data = build_data(recipe, log_report=not verbose)
    _check_first_batch(recipe, data)
    check_batches(recipe, data)
    run_dir = prepare_run_dir(recipe, fresh=fresh)
    with dtype_policy(recipe.train.precision):
        model = build_model(recipe, channels=data.channels)
    steps = len(data.train)
    compile_model(model, recipe, total_steps=steps * recipe.train.epochs)
    set_step_options(model, recipe, steps_per_epoch=steps)
    build_training_variables(model, data.train[0])
    if verbose:
        print(describe(recipe, model, data, recipe_path), flush=True)

    checkpoint_dir = os.path.join(run_dir, "checkpoints")
    initial_epoch, initial_step = 0, 0
    found = state.checkpoint  # what check_run_dir found; None after --fresh emptied the run
    if found is not None:
        initial_epoch, initial_step, path = found
        model.load_weights(path)
        restore_rng_state(model, checkpoint_dir, path)
        if verbose and initial_epoch >= recipe.train.epochs:
            print(f"all {initial_epoch} epochs are trained ({path}); writing the run's records"
                  " from it", flush=True)
        elif verbose:
            at = f"epoch {initial_epoch}" + (f", step {initial_step}" if initial_step else "")
            print(f"resuming from {path} ({at})", flush=True)

    weights = {name: h.loss_weight for name, h in recipe.heads.items()}
    spatial = [n for n, h in recipe.heads.items() if HEAD_KINDS[h.kind].spatial]
    # A non-static weighting's effective weights are read from the model as it trains.
    tensorboard = TensorBoardLogs(os.path.join(run_dir, "logs"), recipe.heads, weights,
                                  weights_every=recipe.train.weighting.log_every,
                                  preview=_preview(data, spatial) if spatial else None)
    checkpoint = AtomicCheckpoint(checkpoint_dir)
    nonfinite = NonFiniteGuard(recipe.heads, checkpoint, mode=recipe.train.on_nonfinite,
                               max_skipped=recipe.train.max_skipped_steps)
    interrupt = InterruptGuard(checkpoint)
    progress = Progress(weights, main_metrics(recipe), epochs=recipe.train.epochs,
                        steps_per_epoch=steps) if verbose else None
    callbacks = [HeadLogs(weights), *([progress] if progress else []), tensorboard, nonfinite,
                 interrupt, checkpoint,
                 *precise_bn_callbacks(recipe, data),
                 *gradflow_callbacks(recipe, data, os.path.join(run_dir, "logs")),
                 *extra_callbacks]
    if data.report is not None:
        _record_data_report(data.report, run_dir, tensorboard)
    validation = process_feed(data.val.dataset())
    started = time.time()
    history = None
    epochs = recipe.train.epochs
    resumed_from = initial_epoch
    try:
        if initial_step and initial_epoch < epochs:
            # Finish the epoch that an interrupt cut short, from the step after the checkpoint.
            interrupt.epoch, interrupt.start_step = initial_epoch, initial_step
            if progress:
                progress.start_step = initial_step
            start = initial_epoch * steps + initial_step
            feed = process_feed(data.train.dataset(start, (initial_epoch + 1) * steps))
            set_steps_per_call(model, steps_per_call(recipe.train.steps_per_execution,
                                                     steps - initial_step))
            history = model.fit(feed,
                                steps_per_epoch=steps - initial_step, shuffle=False,
                                validation_data=validation, epochs=initial_epoch + 1,
                                initial_epoch=initial_epoch,
                                callbacks=DeviceLogCallbacks(callbacks, model=model,
                                                             epochs=initial_epoch + 1,
                                                             steps=steps - initial_step),
                                verbose=0)
            initial_epoch += 1
        if initial_epoch < epochs and not (interrupt.requested or nonfinite.failure):
            interrupt.start_step = 0
            feed = process_feed(data.train.dataset(initial_epoch * steps, epochs * steps))
            set_steps_per_call(model, steps_per_call(recipe.train.steps_per_execution, steps))
            history = model.fit(feed,
                                steps_per_epoch=steps, shuffle=False, validation_data=validation,
                                epochs=epochs, initial_epoch=initial_epoch,
                                callbacks=DeviceLogCallbacks(callbacks, model=model,
                                                             epochs=epochs, steps=steps),
                                verbose=0)
    finally:
        tensorboard.close()
    elapsed = time.time() - started
    if nonfinite.failure:
        raise NonFiniteLoss(nonfinite.failure)
    if interrupt.requested:
        raise TrainingInterrupted(
            f"interrupted: checkpoint saved to {interrupt.saved_path}; run the same command to"
            " resume from there")

    metrics_path = os.path.join(run_dir, "metrics.json")
    train_logs = {}
    if history is not None and history.history:
        train_logs = {k: v[-1] for k, v in history.history.items() if not k.startswith("val_")}
        train_logs.update(weighted_losses(train_logs, weights))
    val_logs = model.evaluate(validation, verbose=0, return_dict=True)
    val_logs.update(weighted_losses(val_logs, weights))
    # The epochs this model has had (a callback may stop a run early), never the asked number.
    done = (latest_checkpoint(checkpoint_dir) or (initial_epoch,))[0]
    metrics = {
        "recipe": recipe.name,
        "epochs": done,
        "seconds": round(elapsed, 2) if train_logs else None,
        "train": nest_logs(train_logs, recipe.heads),
        "val": nest_logs(val_logs, recipe.heads),
        "about": FIGURES_ABOUT,
    }
    mode_check = check_inference_mode(recipe, model, data)
    if mode_check is not None:
        metrics["inference_check"] = mode_check
        if mode_check["warning"] and is_chief():  # once, not from every process
            print(mode_check["warning"], file=sys.stderr, flush=True)
    previous = read_json(metrics_path)
    if not train_logs and previous.get("epochs") == done:
        # Nothing trained here (the model was lost after the last checkpoint): keep the
        # figures that the training itself recorded.
        metrics["train"], metrics["seconds"] = previous.get("train", {}), previous.get("seconds")
    # metrics.json last: with the checkpoint, it marks the run complete (check_run_dir).
    # A weighted model is saved as the plain functional one, its final weights as constants.
    save_model_atomic(inference_model(model), os.path.join(run_dir, "model.keras"))
    write_json_atomic(metrics_path, metrics)
    if verbose:
        print(final_summary(metrics, run_dir), flush=True)
    return TrainResult(model=model, run_dir=run_dir, metrics=metrics,
                       epochs_run=done - resumed_from)


def main_metrics(recipe) -> dict[str, str | None]:
    """Each head's first metric, as Keras logs it after ``<head>_`` (the progress display's
    metric column)."""
    found = {}
    for name, head in recipe.heads.items():
        metric = head.metrics[0] if head.metrics else None
        class_id = metric.options.get("class_id") if metric else None
        found[name] = (None if metric is None else metric.name if class_id is None
                       else f"{metric.name}_class{class_id}")
    return found


def _record_data_report(report, run_dir: str, tensorboard: TensorBoardLogs) -> None:
    text = report.text()
    with open(os.path.join(run_dir, "data_report.txt"), "w", encoding="utf-8") as handle:
        handle.write(text + "\n")
    # Markdown: indented lines keep the report's layout in TensorBoard's text tab.
    tensorboard.writer("train").text("data/report", "\n".join("    " + line for line in
                                                               text.splitlines()), 0)


def precise_bn_callbacks(recipe, data) -> list:
    """Population statistics recomputed before each validation (``train.precise_bn``)."""
    if recipe.model.norm != "batch" or not recipe.train.precise_bn:
        return []
    return [PreciseBatchNorm(lambda step: data.train.global_batch(step)[0],
                             steps_per_epoch=len(data.train), count=recipe.train.precise_bn)]


def check_inference_mode(recipe, model: keras.Model, data, batches: int = 4) -> dict | None:
    """Validation metrics in inference mode against training mode on a few batches; a
    warning when they differ by more than ``MODE_GAP_MARGIN``. None when the two modes compute
    the same thing (no batch normalisation, no dropout)."""
    if not has_mode_dependent_layers(model):
        return None
    # Full batches only (unless there is one batch): one traced shape per mode.
    full = len(data.val) - (len(data.val) > 1 and data.val.count % data.val.batch_size != 0)
    count = min(batches, full)

    def metrics():
        built = head_metrics(recipe, head_losses(recipe))
        return {head: [m for m in ms if not isinstance(m, LossTerm)]
                for head, ms in built.items()}

    gaps = mode_gap(model, (data.val[i] for i in range(count)), metrics)
    warning = mode_gap_warning(gaps, norm=recipe.model.norm,
                               norm_momentum=recipe.model.norm_momentum,
                               precise_bn=recipe.train.precise_bn,
                               dropout=recipe.model.dropout, batches=count)
    return {"batches": count, "margin": MODE_GAP_MARGIN,
            "metrics": {head: {g.metric: {"inference": round(g.inference, 4),
                                          "training": round(g.training, 4)}
                               for g in gaps if g.head == head} for head in recipe.heads},
            "warning": warning}


def gradflow_callbacks(recipe, data, logdir: str) -> list:
    """Per-head gradient snapshots into TensorBoard every ``train.gradflow.every`` steps."""
    if not recipe.train.gradflow.every:
        return []
    return [GradflowLogger.from_recipe(recipe, data=data, logdir=logdir)]


def _check_first_batch(recipe, data) -> None:
    """Catches target/head mismatches (encoding, label range) before any training step.

    Raises:
        DataError: naming the head's target (``heads.<name>.target``) and what is wrong.
    """
    _, targets = data.train[0]
    for name, head in recipe.heads.items():
        where = f"heads.{name}.target"
        try:
            check_targets(np.asarray(targets[name]), classes=head.classes, where=where)
        except ValueError as exc:
            raise DataError(where, str(exc).removeprefix(f"{where}: ")) from None
