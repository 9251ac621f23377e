"""Train a recipe: ``python -m multiseg.train RECIPE.yaml [--set key.path=value ...]``.

Writes the run directory: ``recipe.yaml`` (resolved), ``checkpoints/`` (atomic; the same
command resumes), ``logs/`` (TensorBoard), ``metrics.json`` and ``model.keras``.
"""

from __future__ import annotations

import os

# Quiet TensorFlow's start-up chatter unless the user asked for it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

from multiseg import load_model  # noqa: E402
from multiseg import recipe as recipe_lib  # noqa: E402
from multiseg.batchnorm import (  # noqa: E402
    MODE_GAP_MARGIN,
    PreciseBatchNorm,
    has_mode_dependent_layers,
    mode_gap,
    mode_gap_warning,
)
from multiseg.callbacks import (  # noqa: E402
    AtomicCheckpoint,
    CheckpointWriteError,
    HeadLogs,
    InterruptGuard,
    NonFiniteGuard,
    NonFiniteLoss,
    TensorBoardLogs,
    TrainingInterrupted,
    latest_checkpoint,
    restore_rng_state,
    split_log_key,
    write_json_atomic,
)
from multiseg.data import DataError, build_data  # noqa: E402
from multiseg.metrics import LossTerm  # noqa: E402
from multiseg.models.build import (  # noqa: E402
    build_model,
    compile_model,
    head_losses,
    head_metrics,
    loss_terms,
    parameter_counts,
)
from multiseg.models.heads import HEAD_OUTPUTS  # noqa: E402


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (another recipe's run, unwritable...)."""


@dataclass
class TrainResult:
    model: keras.Model
    run_dir: str
    metrics: dict
    epochs_run: int


def _comparable(recipe_dict: dict) -> dict:
    # Raising the epoch count and resuming is a normal way to train longer; check_run_dir
    # judges the epochs against the run's checkpoint and learning-rate schedule.
    train = {k: v for k, v in recipe_dict["train"].items() if k != "epochs"}
    return {**recipe_dict, "train": train, "output": None}


@dataclass(frozen=True)
class RunState:
    """What a run directory holds when a run starts, as ``check_run_dir`` found it."""

    checkpoint: tuple[int, int, str] | None  # (epochs done, steps into the next, weights)
    complete: bool  # at train.epochs, with metrics.json and model.keras recording it


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _check_writable(run_dir: str) -> None:
    node = os.path.abspath(run_dir)
    while not os.path.exists(node) and os.path.dirname(node) != node:
        node = os.path.dirname(node)
    if not os.path.isdir(node):
        problem = f"{node} is a file"
    elif not os.access(node, os.W_OK | os.X_OK):
        problem = f"{node} is not writable"
    else:
        return
    raise RunDirError(f"cannot write the run directory {run_dir}: {problem}")


def check_run_dir(recipe, *, fresh: bool) -> RunState:
    """Reads the run directory, writing nothing, and refuses what this recipe cannot continue:
    another recipe's run, a run trained past ``train.epochs`` (its records would then describe
    a model they do not hold), or a cosine schedule whose length would change mid-run.

    Raises:
        RunDirError: saying what the directory holds and what to do.
    """
    run_dir = recipe.output
    _check_writable(run_dir)
    if fresh:
        return RunState(checkpoint=None, complete=False)
    saved = os.path.join(run_dir, "recipe.yaml")
    previous = None
    if os.path.exists(saved):
        try:
            previous = recipe_lib.from_dict(recipe_lib.load_raw(saved))
        except recipe_lib.RecipeError as exc:
            raise RunDirError(
                f"{run_dir} holds a run whose recipe this multiseg cannot read ({exc}). Use"
                " another --output, or --fresh to delete that run and start over.") from None
        if _comparable(previous.to_dict()) != _comparable(recipe.to_dict()):
            raise RunDirError(
                f"{run_dir} holds a run of a different recipe ({saved}). Use another --output,"
                " or --fresh to delete that run and start over.")
    found = latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    if found is None:
        return RunState(checkpoint=None, complete=False)
    epoch, step, path = found
    wanted = recipe.train.epochs
    planned = previous.train.epochs if previous is not None else wanted
    cosine = recipe.train.lr_schedule == "cosine"
    if (epoch, step) > (wanted, 0):
        # Its model and metrics would be labelled with an epoch count they were not trained for.
        done = f"{_epochs(epoch)}" + (f" and {step} steps" if step else "")
        keep = (f"train.epochs={planned}" if cosine else
                f"train.epochs={epoch + 1 if step else epoch} or more")
        raise RunDirError(
            f"{run_dir} has {done} done ({os.path.relpath(path, run_dir)}), more than"
            f" train.epochs={wanted}: a run is not cut back. Keep {keep} for this run, or"
            f" train {_epochs(wanted)} in a new one: another --output, or --fresh to delete"
            " this run and start over.")
    if cosine and planned != wanted:
        # The decay spans epochs x steps: another length moves every remaining step's rate, so
        # it would jump at the resume point (up after a finished run, down within one).
        state = "finished" if (epoch, step) == (planned, 0) else "stopped"
        raise RunDirError(
            f"{run_dir} was trained {epoch} of {planned} epochs"
            f"{f' and {step} steps' if step else ''} ({state}) with lr_schedule: cosine, which"
            f" decays over those {planned} epochs: with train.epochs={wanted} the learning rate"
            f" would jump at epoch {epoch}. Keep train.epochs={planned} to"
            f" {'leave this run as it is' if state == 'finished' else 'resume it'}, or train"
            f" {_epochs(wanted)} in a new run: another --output, or --fresh to delete this one."
            " (A run with lr_schedule: constant can be resumed with more epochs.)")
    complete = ((epoch, step) == (wanted, 0)
                and _read_json(os.path.join(run_dir, "metrics.json")).get("epochs") == wanted
                and os.path.isfile(os.path.join(run_dir, "model.keras")))
    return RunState(checkpoint=found, complete=complete)


def _epochs(count: int) -> str:
    return f"{count} epoch{'' if count == 1 else 's'}"


def _finished_run(recipe, verbose) -> TrainResult:
    """The records of a run that already reached train.epochs, read and left untouched."""
    run_dir = recipe.output
    epochs = recipe.train.epochs
    if verbose:
        longer = ("raise train.epochs" if recipe.train.lr_schedule == "constant" else
                  "start a new run with more epochs (another --output, or --fresh): the"
                  " cosine schedule spans the run's epochs")
        print(f"{run_dir} is complete: {epochs} of {_epochs(epochs)} trained; its metrics.json"
              f" and model.keras are left as they are. To train longer, {longer}.", flush=True)
    model = load_model(os.path.join(run_dir, "model.keras"))
    metrics = _read_json(os.path.join(run_dir, "metrics.json"))
    return TrainResult(model=model, run_dir=run_dir, metrics=metrics, epochs_run=0)


def prepare_run_dir(recipe, *, fresh: bool) -> str:
    """Creates the run directory (after ``check_run_dir``): with ``fresh``, deletes the run
    it holds; then writes the resolved recipe."""
    run_dir = recipe.output
    saved = os.path.join(run_dir, "recipe.yaml")
    if fresh and os.path.isdir(run_dir):
        for name in ("checkpoints", "logs", "metrics.json", "model.keras"):
            path = os.path.join(run_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    try:
        os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
        tmp = f"{saved}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(recipe_lib.dump(recipe))
        os.replace(tmp, saved)
    except OSError as exc:
        raise RunDirError(f"cannot write the run directory {run_dir}: {exc.strerror}") from None
    return run_dir


def describe(recipe, model: keras.Model, data, recipe_path: str | None = None) -> str:
    """The start-up summary: data, trunk, and per head its target, loss terms and weights."""
    counts = parameter_counts(model, recipe.heads)
    d = recipe.data
    lines = [
        f"multiseg: {recipe.name}" + (f" ({recipe_path})" if recipe_path else "")
        + f" -> {recipe.output}",
        data.report.text() if data.report else
        f"data: {d.source.kind}, {data.train.count} train / {data.val.count} val samples of"
        f" {d.image_size[0]}x{d.image_size[1]}x{data.channels}",
        f"training: batch {recipe.train.batch_size}, {len(data.train)} steps/epoch,"
        f" {recipe.train.epochs} epochs",
        f"trunk: unet {list(recipe.model.filters)}, norm {recipe.model.norm}, "
        f"{counts['shared']:,} params (shared)",
        "heads:",
    ]
    losses = head_losses(recipe)
    for name, head in recipe.heads.items():
        target = head.target.source
        if head.target.derive:
            opts = ", ".join(f"{k}={v}" for k, v in head.target.options.items())
            target = f"{head.target.derive}({head.target.source}{', ' + opts if opts else ''})"
        terms = " + ".join(f"{w:g}*{label}" for label, w, _ in loss_terms(losses[name]))
        lines.append(
            f"  {name}: {head.kind}, {head.classes} class{'es' if head.classes > 1 else ''},"
            f" target {target}, attach {head.attach}, loss_weight {head.loss_weight:g},"
            f" loss {terms}, {counts[name]:,} params")
    total = sum(counts.values())
    lines.append("total loss = " + " + ".join(
        f"{h.loss_weight:g}*{n}" for n, h in recipe.heads.items()) + f"; {total:,} params")
    return "\n".join(lines)


def nest_logs(logs: dict, heads) -> dict:
    """{"mask_dice": x, "loss": y} -> {"mask": {"dice": x}, "total": {"loss": y}}."""
    nested: dict[str, dict] = {}
    for key, value in logs.items():
        group, name = split_log_key(key, heads)
        nested.setdefault(group, {})[name] = float(value)
    return nested


def _seed_everything(recipe) -> None:
    keras.utils.set_random_seed(recipe.seed)
    if recipe.train.deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def _preview(data, heads: list[str], count: int = 4) -> tuple:
    """A few validation images and their targets, drawn in TensorBoard each epoch."""
    images, targets = data.val[0]
    return (np.asarray(images[:count]), {h: np.asarray(targets[h][:count]) for h in heads},
            heads)


def train(recipe, *, fresh: bool = False, verbose: int | str = "auto",
          recipe_path: str | None = None, extra_callbacks=()) -> TrainResult:
    """Trains ``recipe`` into its run directory, resuming from its last checkpoint if any.
    Everything that can be refused (the run directory, the data, the first batch's targets)
    is checked before the directory is written or, with ``fresh``, emptied."""
    state = check_run_dir(recipe, fresh=fresh)
    if state.complete:
        return _finished_run(recipe, verbose)
    _seed_everything(recipe)
    # When the summary is printed, the report is part of it; otherwise it goes to the log.
    data = build_data(recipe, log_report=not verbose)
    _check_first_batch(recipe, data)
    run_dir = prepare_run_dir(recipe, fresh=fresh)
    model = build_model(recipe, channels=data.channels)
    steps = len(data.train)
    compile_model(model, recipe, total_steps=steps * recipe.train.epochs)
    if verbose:
        print(describe(recipe, model, data, recipe_path), flush=True)

    checkpoint_dir = os.path.join(run_dir, "checkpoints")
    initial_epoch, initial_step = 0, 0
    found = state.checkpoint  # what check_run_dir found; None after --fresh emptied the run
    if found is not None:
        initial_epoch, initial_step, path = found
        model.optimizer.build(model.trainable_variables)
        model.load_weights(path)
        restore_rng_state(model, checkpoint_dir, path)
        if verbose and initial_epoch >= recipe.train.epochs:
            print(f"all {initial_epoch} epochs are trained ({path}); writing the run's records"
                  " from it", flush=True)
        elif verbose:
            at = f"epoch {initial_epoch}" + (f", step {initial_step}" if initial_step else "")
            print(f"resuming from {path} ({at})", flush=True)

    weights = {name: h.loss_weight for name, h in recipe.heads.items()}
    spatial = [n for n, h in recipe.heads.items() if HEAD_OUTPUTS[h.kind].spatial]
    tensorboard = TensorBoardLogs(os.path.join(run_dir, "logs"), recipe.heads, weights,
                                  preview=_preview(data, spatial) if spatial else None)
    checkpoint = AtomicCheckpoint(checkpoint_dir)
    nonfinite = NonFiniteGuard(recipe.heads, checkpoint, mode=recipe.train.on_nonfinite,
                               max_skipped=recipe.train.max_skipped_steps)
    interrupt = InterruptGuard(checkpoint)
    callbacks = [HeadLogs(weights), tensorboard, nonfinite, interrupt, checkpoint,
                 *precise_bn_callbacks(recipe, data),
                 *gradflow_callbacks(recipe, data, os.path.join(run_dir, "logs")),
                 *extra_callbacks]
    if data.report is not None:
        _record_data_report(data.report, run_dir, tensorboard)
    validation = data.val.dataset()
    started = time.time()
    history = None
    epochs = recipe.train.epochs
    resumed_from = initial_epoch
    try:
        steps = len(data.train)
        if initial_step and initial_epoch < epochs:
            # Finish the epoch that an interrupt cut short, from the step after the checkpoint.
            interrupt.epoch, interrupt.start_step = initial_epoch, initial_step
            start = initial_epoch * steps + initial_step
            history = model.fit(data.train.dataset(start, (initial_epoch + 1) * steps),
                                steps_per_epoch=steps - initial_step, shuffle=False,
                                validation_data=validation, epochs=initial_epoch + 1,
                                initial_epoch=initial_epoch, callbacks=callbacks,
                                verbose=verbose)
            initial_epoch += 1
        if initial_epoch < epochs and not (interrupt.requested or nonfinite.failure):
            interrupt.start_step = 0
            history = model.fit(data.train.dataset(initial_epoch * steps, epochs * steps),
                                steps_per_epoch=steps, shuffle=False, validation_data=validation,
                                epochs=epochs, initial_epoch=initial_epoch, callbacks=callbacks,
                                verbose=verbose)
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
        HeadLogs(weights)._add(train_logs)
    val_logs = model.evaluate(validation, verbose=0, return_dict=True)
    HeadLogs(weights)._add(val_logs)
    # The epochs this model has had (a callback may stop a run early), never the asked number.
    done = (latest_checkpoint(checkpoint_dir) or (initial_epoch,))[0]
    metrics = {
        "recipe": recipe.name,
        "epochs": done,
        "seconds": round(elapsed, 2) if train_logs else None,
        "train": nest_logs(train_logs, recipe.heads),
        "val": nest_logs(val_logs, recipe.heads),
    }
    mode_check = check_inference_mode(recipe, model, data)
    if mode_check is not None:
        metrics["inference_check"] = mode_check
        if mode_check["warning"]:
            print(mode_check["warning"], file=sys.stderr, flush=True)
    previous = _read_json(metrics_path)
    if not train_logs and previous.get("epochs") == done:
        # Nothing trained here (the model was lost after the last checkpoint): keep the
        # figures that the training itself recorded.
        metrics["train"], metrics["seconds"] = previous.get("train", {}), previous.get("seconds")
    # metrics.json last: with the checkpoint, it marks the run complete (check_run_dir).
    save_model_atomic(model, os.path.join(run_dir, "model.keras"))
    write_json_atomic(metrics_path, metrics)
    if verbose:
        print(format_metrics(metrics["val"], "validation"), flush=True)
        print(f"run directory: {run_dir} (tensorboard --logdir {os.path.join(run_dir, 'logs')})",
              flush=True)
    return TrainResult(model=model, run_dir=run_dir, metrics=metrics,
                       epochs_run=done - resumed_from)


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
    from multiseg.gradflow import GradflowLogger

    return [GradflowLogger.from_recipe(recipe, data=data, logdir=logdir)]


def _check_first_batch(recipe, data) -> None:
    """Catches target/head mismatches (encoding, label range) before any training step."""
    from multiseg.losses import check_targets

    _, targets = data.train[0]
    for name, head in recipe.heads.items():
        check_targets(np.asarray(targets[name]), classes=head.classes,
                      where=f"heads.{name}.target")


def save_model_atomic(model: keras.Model, path: str) -> None:
    tmp = f"{path[: -len('.keras')]}.tmp-{os.getpid()}.keras"
    try:
        model.save(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise CheckpointWriteError(f"cannot write {path}: {exc.strerror or exc}") from None


def format_metrics(nested: dict, title: str) -> str:
    lines = [f"{title}:"]
    for group, values in nested.items():
        lines.append(f"  {group}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m multiseg.train",
        description="Train a multi-task segmentation recipe into a run directory.")
    parser.add_argument("recipe", help="recipe YAML file, e.g. recipes/shapes.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY.PATH=VALUE",
                        help="override a recipe field, e.g. --set train.epochs=2 "
                             "--set heads.mask.loss_weight=0.5 (repeatable)")
    parser.add_argument("--output", help="run directory (default: the recipe's output)")
    parser.add_argument("--fresh", action="store_true",
                        help="delete an existing run in the output directory and start over")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    args = parser.parse_args(argv)
    try:
        recipe = recipe_lib.load(args.recipe, args.overrides)
        if args.output:
            recipe = dataclasses.replace(recipe, output=args.output)
        train(recipe, fresh=args.fresh, verbose=0 if args.quiet else "auto",
              recipe_path=args.recipe)
    except (recipe_lib.RecipeError, DataError, RunDirError, CheckpointWriteError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except NonFiniteLoss as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except TrainingInterrupted as exc:
        print(f"\n{exc}", file=sys.stderr)
        return 130
    except ValueError as exc:
        # Target checks and loss construction raise ValueError naming the head or file.
        if "heads." in str(exc) or "data." in str(exc):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("\ninterrupted: the last completed epoch is checkpointed; run the same command"
              " to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
