"""Run directories: what a run holds, whether a recipe may continue it, and its trained model.

A run directory (written by ``multiseg.train``) holds ``recipe.yaml`` (the resolved recipe),
``checkpoints/`` (``epoch-NNNN[-step-NNNNNN].weights.h5`` and ``state.json`` naming the last
good one), ``logs/`` (TensorBoard), ``metrics.json`` and ``model.keras``. This module is the one
place that finds those files: the commands (train, evaluate, predict) and the gradient-flow
report ask it. Reading a run's records needs no Keras (the commands check a run before Keras
starts); rebuilding its model imports ``multiseg.models`` when asked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from multiseg import load_model
from multiseg import recipe as recipe_lib
from multiseg.data import build_data
from multiseg.errors import UserError
from multiseg.recipe.reader import build_checks

if TYPE_CHECKING:
    import keras

# What the figures of metrics.json are, in metrics.json itself and in what evaluate prints:
# the two ways of measuring a split give different numbers, and users compare them.
FIGURES_ABOUT = {
    "train": "running means over the steps of the last epoch, in training mode (dropout on,"
             " batch statistics) while the weights changed",
    "val": "one pass of the final model over the validation set, in inference mode",
}
EVALUATED_ABOUT = "one pass of the {model} over the {split} set, in inference mode"

CHECKPOINT_PATTERN = re.compile(r"^epoch-(\d+)(?:-step-(\d+))?\.weights\.h5$")


class RunDirError(RuntimeError, UserError):
    """The run directory cannot be used as asked (another recipe's run, unwritable...)."""


class RunNotFound(ValueError, UserError):
    """The directory holds no run that can be evaluated."""


class WeightsMismatch(RunNotFound):
    """The run's saved weights do not fit the model built for the data at hand. ``detail``:
    what Keras said."""

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.detail = detail


# ---------------------------------------------------------------------------------------------
# Finding what a run holds.


def latest_checkpoint(directory: str) -> tuple[int, int, str] | None:
    """(completed epochs, steps into the next epoch, weights path) of the last good checkpoint.

    ``state.json`` names it; if that file is missing or unreadable, the newest complete
    ``epoch-*.weights.h5`` is used (those only appear by rename, so they are whole).
    """
    if not os.path.isdir(directory):
        return None
    state_path = os.path.join(directory, "state.json")
    try:
        with open(state_path, encoding="utf-8") as handle:
            state = json.load(handle)
        path = os.path.join(directory, state["weights"])
        if os.path.exists(path):
            return int(state["epoch"]), int(state.get("step", 0)), path
    except (OSError, ValueError, KeyError, TypeError):
        pass
    found = []
    for name in os.listdir(directory):
        match = CHECKPOINT_PATTERN.match(name)
        if match:
            found.append((int(match.group(1)), int(match.group(2) or 0), name))
    if not found:
        return None
    epoch, step, name = max(found)
    return epoch, step, os.path.join(directory, name)


def read_json(path: str) -> dict:
    """A JSON object from ``path``; {} when the file is missing, unreadable or not an object."""
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def run_recipe(run_dir: str, overrides=(), *, build: bool = True):
    """The run's resolved recipe (its ``recipe.yaml``), with ``--set`` ``overrides``; ``build``
    as in ``multiseg.recipe.load`` (False: checked without Keras).

    Raises:
        RunNotFound: the directory holds no ``recipe.yaml``.
    """
    path = os.path.join(run_dir, "recipe.yaml")
    if not os.path.isfile(path):
        raise RunNotFound(f"{run_dir}: no recipe.yaml here; is this a multiseg run directory?")
    return recipe_lib.load(path, list(overrides), build=build)


# ---------------------------------------------------------------------------------------------
# A run's trained model.


def load_weights(model: keras.Model, recipe, run_dir: str, *, checkpoint: bool = False) -> str:
    """Loads the run's trained weights into ``model`` (built from ``recipe``): those of
    ``model.keras``, or of the latest checkpoint when asked or when the run has not finished.
    A checkpoint holds the optimizer state too, so a model without one is compiled first.
    Returns the file the weights came from.

    Raises:
        RunNotFound: neither ``model.keras`` nor a checkpoint.
        WeightsMismatch: the saved weights do not fit ``model``.
    """
    from multiseg.models.build import compile_model
    from multiseg.weighting.model import WeightedModel, network

    model_path = os.path.join(run_dir, "model.keras")
    if checkpoint or not os.path.isfile(model_path):
        found = latest_checkpoint(os.path.join(run_dir, "checkpoints"))
        if found is None:
            raise RunNotFound(f"{run_dir}: neither model.keras nor a checkpoint to use")
        if getattr(model, "optimizer", None) is None:
            compile_model(model, recipe)
        model.optimizer.build(model.trainable_variables)
        source = found[2]
        load = lambda: model.load_weights(source)  # noqa: E731
    else:
        # Same architecture, same layer names: the weights load into the fresh model.
        source = model_path
        final = latest_checkpoint(os.path.join(run_dir, "checkpoints"))
        if isinstance(model, WeightedModel) and final is not None:
            # model.keras holds the network only; the weighting's final state (the effective
            # weights evaluate and gradflow use) is in the last checkpoint. The network then
            # comes from model.keras, whose normalisation statistics may be recomputed.
            if getattr(model, "optimizer", None) is None:
                compile_model(model, recipe)
            model.optimizer.build(model.trainable_variables)

            def load():
                model.load_weights(final[2])
                network(model).set_weights(load_model(model_path, compile=False).get_weights())
        else:
            load = lambda: network(model).set_weights(  # noqa: E731
                load_model(model_path, compile=False).get_weights())
    try:
        # Keras warns about every layer it could not fill before it gives up on a mismatch:
        # noise beside the error; kept when the load succeeds.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            load()
    except ValueError as exc:
        channels = model.inputs[0].shape[-1]
        raise WeightsMismatch(f"{run_dir}: its weights do not fit the model the recipe builds for"
                              f" {channels}-channel images ({exc})", str(exc)) from None
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return source


def load_run_model(run_dir: str, recipe, *, channels: int, checkpoint: bool = False):
    """The run's compiled model with its trained weights (see :func:`load_weights`)."""
    from multiseg.models.build import build_model, compile_model

    model = build_model(recipe, channels=channels)
    compile_model(model, recipe)
    load_weights(model, recipe, run_dir, checkpoint=checkpoint)
    return model


def load_run(run_dir: str, *, checkpoint: bool = False):
    """(recipe, data, compiled model with the run's weights) of a run directory."""
    recipe = run_recipe(run_dir)
    data = build_data(recipe, frequencies=False, log_report=False)
    model = load_run_model(run_dir, recipe, channels=data.channels, checkpoint=checkpoint)
    return recipe, data, model


# ---------------------------------------------------------------------------------------------
# Whether a recipe may continue the run its output directory holds.


@dataclass(frozen=True)
class RunState:
    """What a run directory holds when a run starts, as ``check_run_dir`` found it."""

    checkpoint: tuple[int, int, str] | None  # (epochs done, steps into the next, weights)
    complete: bool  # at train.epochs, with metrics.json and model.keras recording it


def _comparable(recipe_dict: dict) -> dict:
    # Raising the epoch count and resuming is a normal way to train longer; check_run_dir
    # judges the epochs against the run's checkpoint and learning-rate schedule. Compilation
    # and distribution say how a step is computed, not what is trained. (Precision is part of
    # the run: a float16 run's checkpoints hold the loss scale's state.)
    train = {k: v for k, v in recipe_dict["train"].items()
             if k not in ("epochs", "jit_compile", "steps_per_execution", "distribute")}
    return {**recipe_dict, "train": train, "output": None}


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


def epochs_text(count: int) -> str:
    """``1 epoch``, ``3 epochs``."""
    return f"{count} epoch{'' if count == 1 else 's'}"


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
            # Checked when it was written; here it is only compared, so read without Keras.
            with build_checks(False):
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
        done = f"{epochs_text(epoch)}" + (f" and {step} steps" if step else "")
        keep = (f"train.epochs={planned}" if cosine else
                f"train.epochs={epoch + 1 if step else epoch} or more")
        raise RunDirError(
            f"{run_dir} has {done} done ({os.path.relpath(path, run_dir)}), more than"
            f" train.epochs={wanted}: a run is not cut back. Keep {keep} for this run, or"
            f" train {epochs_text(wanted)} in a new one: another --output, or --fresh to delete"
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
            f" {epochs_text(wanted)} in a new run: another --output, or --fresh to delete this"
            " one. (A run with lr_schedule: constant can be resumed with more epochs.)")
    complete = ((epoch, step) == (wanted, 0)
                and read_json(os.path.join(run_dir, "metrics.json")).get("epochs") == wanted
                and os.path.isfile(os.path.join(run_dir, "model.keras")))
    return RunState(checkpoint=found, complete=complete)


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


# ---------------------------------------------------------------------------------------------
# Describing a run.


def _compiler() -> str:
    # What jit_compile turns on: Keras compiles the step with torch.compile on PyTorch.
    import keras

    return "torch.compile" if keras.backend.backend() == "torch" else "XLA"


def _cache_line() -> list[str]:
    """Where JAX keeps the programs it compiles, on JAX (``multiseg.startup.compile_cache``)."""
    import keras

    from multiseg.startup import COMPILE_CACHE_ENV, compile_cache

    if keras.backend.backend() != "jax":
        return []
    path = compile_cache()
    if path is None:
        return [f"compiled programs: not cached ({COMPILE_CACHE_ENV}=DIR keeps them)"]
    return [f"compiled programs: cached in {path}"]


def _steps_per_call_text(requested: int, chosen: int, steps: int) -> str:
    if requested == 1:
        return ""
    if chosen == requested:
        return f", {chosen} steps per call"
    return (f", {chosen} step{'s' if chosen > 1 else ''} per call (train.steps_per_execution"
            f" {requested}: the most that divide the {steps} steps of an epoch)")


def describe(recipe, model: keras.Model, data, recipe_path: str | None = None) -> str:
    """The start-up summary: data, trunk, and per head its target, loss terms and weights."""
    from multiseg.models.build import head_losses, loss_terms, parameter_counts

    counts = parameter_counts(model, recipe.heads)
    d = recipe.data
    lines = [
        f"multiseg: {recipe.name}" + (f" ({recipe_path})" if recipe_path else "")
        + f" -> {recipe.output}",
        data.report.text() if data.report else
        f"data: {d.source.kind}, {data.train.count} train / {data.val.count} val samples of"
        f" {d.image_size[0]} x {d.image_size[1]} (height x width), {data.channels} channels",
        f"training: batch {recipe.train.batch_size}, {len(data.train)} steps/epoch,"
        f" {epochs_text(recipe.train.epochs)}, {recipe.train.precision}, {_compiler()}"
        f" {'on' if model.jit_compile else 'off'}"
        + (" (jit_compile: auto)" if recipe.train.jit_compile == "auto" else "")
        + _steps_per_call_text(recipe.train.steps_per_execution, model.steps_per_execution,
                               len(data.train)),
        *_cache_line(),
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


def format_metrics(nested: dict, title: str) -> str:
    """Nested figures (``metrics.json``'s ``val``) as the lines the commands print: per head its
    loss and weighted loss, then its metrics, then its loss terms."""
    def order(name: str) -> tuple[int, str]:
        rank = {"loss": 0, "weighted_loss": 1}.get(name, 3 if name.endswith("_term") else 2)
        return rank, name

    lines = [f"{title}:"]
    for group, values in nested.items():
        lines.append(f"  {group}: " + ", ".join(f"{k} {values[k]:.4f}"
                                                for k in sorted(values, key=order)))
    return "\n".join(lines)


def final_summary(metrics: dict, run_dir: str) -> str:
    """What a finished run prints (``--quiet`` too): the final model's validation figures
    per head, then where the run is."""
    return "\n".join([
        format_metrics(metrics["val"], f"validation ({FIGURES_ABOUT['val']})"),
        f"run directory: {run_dir} (tensorboard --logdir {os.path.join(run_dir, 'logs')})"])


def finished_run_text(recipe, metrics: dict) -> str:
    """What training a run that already reached ``train.epochs`` says: nothing is trained or
    written, how to train longer, then the run's final figures (its ``metrics``)."""
    run_dir, epochs = recipe.output, recipe.train.epochs
    longer = ("raise train.epochs" if recipe.train.lr_schedule == "constant" else
              "start a new run with more epochs (another --output, or --fresh): the"
              " cosine schedule spans the run's epochs")
    return (f"{run_dir} is complete: {epochs} of {epochs_text(epochs)} trained; its metrics.json"
            f" and model.keras are left as they are. To train longer, {longer}.\n"
            + final_summary(metrics, run_dir))
