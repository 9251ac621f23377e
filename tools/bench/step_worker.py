"""One contender of ``step.py``, in its own process: ``step.py`` starts it and drives it.

    python tools/bench/step_worker.py CONFIG.json

Contenders: ``multiseg`` (``multiseg.train.train`` with its data pipeline and callbacks),
``multiseg-model`` (multiseg's compiled model, ``fit`` on two of its batches in memory),
``keras`` (``handmade_keras``: ``fit`` on two batches in memory), ``torch`` and
``torch-compiled`` (``handmade_torch``: a plain training loop, eager or with the forward pass
and losses under ``torch.compile``).

The protocol: the worker trains one step (tracing, compilation) and ``warmup`` more, sends
``ready``, then waits. Each ``run`` on standard input trains ``steps`` steps and answers
``block`` with each step's wall time; ``gradflow`` (multiseg only) measures a gradient
snapshot; ``quit`` ends the process at once. Messages are JSON lines on standard output
behind ``@bench``; anything else printed there is ignored.

A step's time runs from the end of the previous step to the end of this one: data, the
callbacks' work and the compute, up to reading the loss as a number, which waits for the
device. Every contender reads its loss every step, as multiseg's own callbacks do (Keras
turns the logs into numbers before calling a callback not marked ``async_safe``, like the
clock here; the PyTorch loop calls ``loss.item()``).
Only the chosen framework is imported: the PyTorch contenders import neither Keras nor
TensorFlow, and on the JAX backend nothing imports TensorFlow.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback

STARTED = time.perf_counter()
PREFIX = "@bench "
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.join(HERE, "..", ".."))


def send(event: str, **data) -> None:
    print(PREFIX + json.dumps({"event": event, **data}), flush=True)


def host_peak_mb() -> float:
    """The process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def device_memory(framework: str) -> dict:
    """The accelerator, and its peak memory in use by this process, in MiB (None on CPU)."""
    if framework == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform == "cpu":
            return {"device": "cpu", "device_peak_mb": None}
        stats = device.memory_stats() or {}
        peak = stats.get("peak_bytes_in_use")
        return {"device": device.device_kind,
                "device_peak_mb": None if peak is None else peak / 2**20}
    if framework == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            return {"device": "cpu", "device_peak_mb": None}
        name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
        peak = tf.config.experimental.get_memory_info("GPU:0")["peak"]
        return {"device": name, "device_peak_mb": peak / 2**20}
    import torch

    if not torch.cuda.is_available():
        return {"device": "cpu", "device_peak_mb": None}
    return {"device": torch.cuda.get_device_name(0),
            "device_peak_mb": torch.cuda.max_memory_allocated() / 2**20}


class Blocks:
    """The step clock and the protocol; ``tick(steps)`` at the end of every call of
    ``steps`` training steps (``per_call``: the steps of each call, Keras's
    ``steps_per_execution``; the warm-up and a turn's steps are whole calls)."""

    def __init__(self, config: dict, framework: str, info=None, gradflow=None, per_call=1):
        self.per_call = per_call
        self.warmup = config["warmup"]
        self.steps = config["steps"]
        self.framework = framework
        self.info = info or (lambda: {})
        self.gradflow = gradflow
        self.count = 0
        self.times: list[float] = []
        self.first = None
        self.imports_s = None
        self.rss_imports_mb = None
        self.begun = None

    def imported(self) -> None:
        """The framework is imported: what follows is setup."""
        self.imports_s = time.perf_counter() - STARTED
        self.rss_imports_mb = host_peak_mb()

    def start(self) -> None:
        """Training begins: the first step's clock starts."""
        self.begun = time.perf_counter()
        self.last = self.begun

    def tick(self, steps: int = 1) -> None:
        now = time.perf_counter()
        self.count += steps
        if self.count == steps:
            self.first = now - self.last
        elif self.count > self.per_call + self.warmup:
            self.times.extend([(now - self.last) / steps] * steps)
        if self.count == self.per_call + self.warmup:
            send("ready", first_step_s=self.first, imports_s=self.imports_s,
                 setup_s=self.begun - STARTED - self.imports_s,
                 rss_imports_mb=self.rss_imports_mb, **self.memory(), **self.info())
            self.wait()
        elif len(self.times) >= self.steps:
            send("block", times=self.times, **self.memory())
            self.times = []
            self.wait()
        self.last = time.perf_counter()

    def memory(self) -> dict:
        return {"host_peak_mb": host_peak_mb(), **device_memory(self.framework)}

    def wait(self) -> None:
        while True:
            command = sys.stdin.readline().strip()
            if command == "run":
                return
            if command == "gradflow" and self.gradflow is not None:
                send("gradflow", **self.gradflow())
                continue
            os._exit(0)  # "quit", or step.py is gone: nothing here is worth finishing


def total_steps(warmup: int, repeats: int, steps: int, per_call: int = 1) -> int:
    """Steps of a contender's one epoch: the first call, the warm-up, the timed ones, and one
    more call that is never reached, so that no timed step is the epoch's last (multiseg's
    precise batch norm runs at the end of the last)."""
    return per_call + warmup + repeats * steps + per_call


def planned(config: dict) -> int:
    return total_steps(config["warmup"], config["repeats"], config["steps"],
                       config["steps_per_execution"])


# ---------------------------------------------------------------------------------------------
# Keras contenders
# ---------------------------------------------------------------------------------------------


def keras_info(model) -> dict:
    import keras

    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    return {"params": int(model.count_params()), "backend": keras.backend.backend(),
            "compute_dtype": convs[0].compute_dtype if convs else None,
            "jit_compile": bool(getattr(model, "jit_compile", False)),
            "steps_per_execution": int(model.steps_per_execution),
            "versions": {"keras": keras.__version__, **backend_versions()},
            "tensorflow_imported": "tensorflow" in sys.modules}


def backend_versions() -> dict:
    found = {}
    for name in ("tensorflow", "jax", "torch"):
        module = sys.modules.get(name)
        if module is not None:
            found[name] = getattr(module, "__version__", "?")
    return found


def clock_callback(blocks: Blocks, on_begin=None):
    import keras

    class Clock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            if on_begin is not None:
                on_begin(self.model)
            blocks.start()

        def on_train_batch_begin(self, batch, logs=None):
            self.first_batch = batch

        def on_train_batch_end(self, batch, logs=None):
            blocks.tick(batch - self.first_batch + 1)

    return Clock()


def run_multiseg(config: dict) -> None:
    import dataclasses

    import multiseg  # noqa: F401  (first: it quiets TensorFlow before Keras loads)
    from multiseg.startup import import_keras

    keras = import_keras()
    from multiseg import recipe as recipe_lib
    from multiseg.train import train

    recipe = recipe_lib.load(config["recipe"], config["overrides"])
    recipe = dataclasses.replace(recipe, output=config["output"])
    trained = {}

    def gradflow() -> dict:
        from gradflow_overhead import probe_costs

        from multiseg.data import build_data

        data = build_data(recipe, frequencies=False, log_report=False)
        costs = probe_costs(recipe, trained["model"], data, config["gradflow_repeats"])
        return {**costs, "heads": len(recipe.heads)}

    blocks = Blocks(config, keras.backend.backend(), gradflow=gradflow,
                    per_call=config["steps_per_execution"])
    blocks.imported()
    blocks.info = lambda: keras_info(trained["model"])
    clock = clock_callback(blocks, on_begin=lambda model: trained.update(model=model))
    train(recipe, verbose=0, extra_callbacks=[clock])


def run_multiseg_model(config: dict) -> None:
    import multiseg  # noqa: F401  (first: it quiets TensorFlow before Keras loads)
    from multiseg.startup import import_keras

    keras = import_keras()
    from multiseg import recipe as recipe_lib
    from multiseg.data import build_data
    from multiseg.models.build import (
        build_model,
        build_training_variables,
        compile_model,
        set_step_options,
    )
    from multiseg.trainer import dtype_policy

    recipe = recipe_lib.load(config["recipe"], config["overrides"])  # writes no run directory
    blocks = Blocks(config, keras.backend.backend(), per_call=config["steps_per_execution"])
    blocks.imported()
    data = build_data(recipe, frequencies=False, log_report=False)
    with dtype_policy(recipe.train.precision):
        model = build_model(recipe, channels=data.channels)
    compile_model(model, recipe, total_steps=planned(config))
    set_step_options(model, recipe, steps_per_epoch=planned(config))
    batches = [data.train.global_batch(step) for step in range(2)]
    build_training_variables(model, batches[0])
    blocks.info = lambda: keras_info(model)
    model.fit(feed(batches, keras.backend.backend()), steps_per_epoch=planned(config),
              epochs=1, verbose=0, callbacks=[clock_callback(blocks)])


def run_keras(config: dict) -> None:
    import handmade
    import handmade_keras
    import keras

    blocks = Blocks(config, keras.backend.backend(), per_call=config["steps_per_execution"])
    blocks.imported()
    if config["precision"] == "bfloat16":
        keras.config.set_dtype_policy("mixed_bfloat16")
    # No keras.utils.set_random_seed: it imports TensorFlow wherever it is installed, on any
    # backend; the initial weights do not change a step's time.
    spec = config["spec"]
    model = handmade_keras.compile_model(
        handmade_keras.build_model(spec, size=config["size"]), spec)
    model.steps_per_execution = config["steps_per_execution"]
    batches = handmade.synthetic_batches(spec, size=config["size"], batch=config["batch"],
                                         count=2, seed=config["seed"])

    blocks.info = lambda: keras_info(model)
    model.fit(feed(batches, keras.backend.backend()), steps_per_epoch=planned(config),
              epochs=1, verbose=0, callbacks=[clock_callback(blocks)])


def feed(batches: list, backend: str):
    """The batches over and over: on TensorFlow a ``tf.data`` of them (what Keras makes of
    in-memory arrays; its feed of a Python generator, ``from_generator``, doubled the step
    time of the default recipe on a 2-core CPU), elsewhere a generator."""
    if backend == "tensorflow":
        import tensorflow as tf  # the TensorFlow backend only

        dataset = tf.data.Dataset.from_tensors(batches[0])
        for batch in batches[1:]:
            dataset = dataset.concatenate(tf.data.Dataset.from_tensors(batch))
        return dataset.repeat()

    def cycle():
        i = 0
        while True:
            yield batches[i % len(batches)]
            i += 1

    return cycle()


# ---------------------------------------------------------------------------------------------
# PyTorch contenders
# ---------------------------------------------------------------------------------------------


def run_torch(config: dict, *, compiled: bool) -> None:
    import handmade
    import handmade_torch
    import torch

    blocks = Blocks(config, "torch")
    blocks.imported()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.backends.cudnn.benchmark = True  # what PyTorch training scripts set
    torch.manual_seed(config["seed"])
    spec = config["spec"]
    model = handmade_torch.UNet(spec).to(device)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=spec["learning_rate"])
    loss_fn = handmade_torch.make_loss(spec)

    def forward(x, y):
        return loss_fn(model(x), y)

    step_loss = torch.compile(forward) if compiled else forward
    batches = [handmade_torch.to_torch(b, spec, device)
               for b in handmade.synthetic_batches(spec, size=config["size"],
                                                   batch=config["batch"], count=2,
                                                   seed=config["seed"])]
    bf16 = config["precision"] == "bfloat16"
    blocks.info = lambda: {
        "params": handmade_torch.parameter_count(model), "backend": "torch",
        "compute_dtype": "bfloat16" if bf16 else "float32", "jit_compile": compiled,
        "versions": {"torch": torch.__version__}, "threads": torch.get_num_threads(),
        "tensorflow_imported": "tensorflow" in sys.modules}
    blocks.start()
    for i in range(planned(config)):
        x, y = batches[i % len(batches)]
        x = x.to(device, non_blocking=True)
        y = {k: v.to(device, non_blocking=True) for k, v in y.items()}
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            loss = step_loss(x, y)
        loss.backward()
        optimizer.step()
        loss.item()  # waits for the device, as the Keras loops' loss logs do
        blocks.tick()


CONTENDERS = {
    "multiseg": run_multiseg,
    "multiseg-model": run_multiseg_model,
    "keras": run_keras,
    "torch": lambda config: run_torch(config, compiled=False),
    "torch-compiled": lambda config: run_torch(config, compiled=True),
}


def main(argv: list[str]) -> int:
    with open(argv[0], encoding="utf-8") as handle:
        config = json.load(handle)
    try:
        CONTENDERS[config["contender"]](config)
    except Exception as exc:  # reported to step.py, which goes on without this contender
        send("error", message=f"{type(exc).__name__}: {exc}"[:2000],
             traceback=traceback.format_exc()[-4000:])
        return 1
    send("error", message="training ended before step.py asked it to stop")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
