"""The ``train.distribute`` options, and what each cannot train (Keras-free).

``none`` trains on one device. ``mirrored`` (TensorFlow: ``tf.distribute.MirroredStrategy``
over the local devices), ``multi_worker`` (TensorFlow: ``MultiWorkerMirroredStrategy``, the
cluster read from ``TF_CONFIG``) and ``data_parallel`` (JAX: ``keras.distribution.DataParallel``
over every device of every process) split each batch across replicas. The recipe's
``train.batch_size`` is the global batch: each of N replicas gets ``batch_size / N`` samples.

What makes one step on N replicas equal one device on the whole batch:

- TensorFlow: each replica's loss is its local mean scaled by 1/N (Keras's
  ``scale_loss_for_distribution``), the gradients are summed over replicas, loss trackers and
  metric counts are summed over replicas when read. Batch normalisation is switched to
  Keras's synchronized form while training, so that its statistics are the global batch's. A
  loss computed over the whole batch at once (``per_sample: false``) cannot be split into
  per-replica means, and is refused.
- JAX: the step is one program over the global batch, sharded by XLA: every reduction is
  global as written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Distribution:
    """One ``train.distribute`` choice: the backends whose engine it uses, and what it is."""

    backends: tuple[str, ...]
    engine: str
    tensorflow_strategy: bool = False  # replicas run the step, Keras reduces across them
    refused: str | None = None  # why it cannot train with this Keras, on any backend


DISTRIBUTIONS = {
    "none": Distribution(("tensorflow", "jax", "torch"), "one device"),
    "mirrored": Distribution(("tensorflow",), "tf.distribute.MirroredStrategy over the local"
                             " devices", tensorflow_strategy=True),
    "multi_worker": Distribution(
        ("tensorflow",), "tf.distribute.MultiWorkerMirroredStrategy over the workers of"
        " TF_CONFIG", tensorflow_strategy=True,
        # Measured with Keras 3.15 and TensorFlow 2.21, two workers on one machine (see
        # docs/distribution.md): fit fails in Keras's own reductions under this strategy.
        refused="Keras 3's fit does not train under MultiWorkerMirroredStrategy: it averages"
        " the first distributed batch with strategy.reduce (\"Attempt to convert a value"
        " (PerReplica...)\", keras-team/keras#20585) and reduces each step's scalar logs along"
        " axis 0; on one machine use mirrored, across machines data_parallel on JAX"),
    "data_parallel": Distribution(("jax",), "keras.distribution.DataParallel over every"
                                  " device of every process"),
}


def backend_problem(name: str, backend: str) -> str | None:
    """Why ``train.distribute: name`` cannot run on ``backend``; None when it can."""
    choice = DISTRIBUTIONS[name]
    if choice.refused:
        return choice.refused
    if backend in choice.backends:
        return None
    others = [n for n, d in DISTRIBUTIONS.items() if n != "none" and backend in d.backends]
    offer = (f"on {backend} use {' or '.join(others)}" if others
             else f"the {backend} backend has no distribution engine in multiseg: use none")
    return (f"{name} ({choice.engine}) needs the {' or '.join(choice.backends)} backend, and"
            f" Keras runs on {backend}; {offer} (KERAS_BACKEND picks the backend)")


def joins_processes(name: str) -> bool:
    """Whether ``train.distribute: name`` joins other processes in this environment: JAX's
    ``data_parallel`` with Keras's ``KERAS_DISTRIBUTION_NUM_PROCESSES`` above 1, or
    ``multi_worker`` (its cluster from ``TF_CONFIG``)."""
    if name == "multi_worker":
        return True
    count = os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES", "").strip()
    return name == "data_parallel" and count not in ("", "0", "1")


def recipe_problems(recipe) -> list[tuple[str, str]]:
    """(field path, message) for each part of ``recipe`` that its distribution cannot train
    with global-batch semantics; empty for ``none``. The backend is not checked here."""
    name = recipe.train.distribute
    if DISTRIBUTIONS[name].refused:
        return [("train.distribute", DISTRIBUTIONS[name].refused)]
    if not DISTRIBUTIONS[name].tensorflow_strategy:
        return []  # none, or JAX: one program over the global batch
    found = []
    for head_name, head in recipe.heads.items():
        for i, term in enumerate(head.loss):
            if term.options.get("per_sample") is False:
                found.append((f"heads.{head_name}.loss[{i}].per_sample",
                              f"per_sample: false computes {term.name} over the whole batch"
                              f" at once, which train.distribute: {name} cannot split into"
                              " per-replica means; use per_sample: true (the default), or"
                              " data_parallel on JAX"))
    if recipe.train.weighting.method != "static":
        found.append(("train.weighting",
                      f"{recipe.train.weighting.method} updates its state inside each step,"
                      f" which under train.distribute: {name} every replica would do on its"
                      " own share of the batch; use static weights here, or data_parallel on"
                      " JAX (one program over the global batch)"))
    if recipe.train.steps_per_execution > 1:
        # Keras 3.15's loop of several steps in one tf.function fails under a
        # MirroredStrategy ("You must feed a value for placeholder tensor"), a plain Keras
        # model too (keras-team/keras#19246).
        found.append(("train.steps_per_execution",
                      f"Keras runs one step per call under train.distribute: {name} (its loop"
                      " of several fails under a TensorFlow strategy); set it to 1, or use"
                      " data_parallel on JAX"))
    if recipe.train.gradflow.every:
        found.append(("train.gradflow.every",
                      f"gradflow snapshots are not taken under train.distribute: {name} (the"
                      " probe runs outside the strategy's replicas); set it to 0, or take"
                      " snapshots with data_parallel on JAX or without distribution"))
    return found
