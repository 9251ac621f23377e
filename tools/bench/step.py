"""Training speed: multiseg's training loop against the same network written by hand in plain
Keras and in plain PyTorch (eager and ``torch.compile``), measured in one run, interleaved.

    python tools/bench/step.py [RECIPE] [--size 256] [--batch 8] [--steps 20] [--repeats 5]
                               [--precision float32|bfloat16] [--json step.json]

Each contender runs in its own process (``step_worker.py``), started one after the other, so
that each has its own peak memory and a cold first step: it trains its first step (tracing,
compilation: the first-step time) and a few warm-up steps, then waits. Then the repetitions
go round: multiseg, Keras, PyTorch eager, PyTorch compiled, multiseg, ... each training
``--steps`` steps per turn while the others wait. Reported per contender: images/s and the
median step (the median over repetitions of each repetition's median), the fastest step, the
first step, the peak memory (host RSS on a CPU, the device's peak on a GPU), multiseg's
speed relative to each contender (the median over repetitions of the contender's step time
over multiseg's in the same repetition: above 1, multiseg is faster; a shared machine drifts,
so only ratios measured side by side mean much) and multiseg's peak memory over the
contender's. Then,
in multiseg's process, the cost of one gradflow snapshot in training steps and what
``train.gradflow.every`` (``--every``, default 100) adds to training.

The contenders:
- multiseg: ``multiseg.train.train(recipe)`` with its data pipeline (the recipe's source,
  augmented on the fly), per-head and loss-term metrics, TensorBoard logs, the recipe's
  learning-rate schedule. The steps timed lie inside one epoch: validation, checkpoints and
  precise batch norm at an epoch's end are not part of them.
- multiseg-model (asked for by name): multiseg's compiled model (its network, losses, loss
  terms and metrics, ``multiseg.models.build``) fitted as the hand-written one is, on two
  multiseg batches in memory, with no callbacks: it splits a gap to the hand-written model into
  the model's part and the part of multiseg's data pipeline and callbacks.
- keras: ``handmade_keras``: ``fit`` on two fixed batches in memory, Keras's defaults.
- torch, torch-compiled: ``handmade_torch``, a plain loop (Adam; ``torch.compile`` on the
  forward pass and losses), the same two batches; skipped when PyTorch is not installed.
The hand-written networks mirror the recipe's layer for layer; a contender whose parameter
count differs from multiseg's is stopped. ``--precision bfloat16``: multiseg with
``train.precision: mixed_bfloat16``, Keras's ``mixed_bfloat16`` policy, PyTorch's
``torch.autocast(dtype=torch.bfloat16)``. The Keras backend is ``KERAS_BACKEND``'s; on JAX
nothing here imports TensorFlow. ``tools/bench/gpu.sh`` runs the GPU set; docs/performance.md
has the figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(1, ROOT)

import handmade  # noqa: E402  (tools/bench/handmade.py: imports no framework)
from step_worker import PREFIX, total_steps  # noqa: E402

from multiseg import recipe as recipe_lib  # noqa: E402  (reads recipes without Keras)
from multiseg.errors import UserError  # noqa: E402

CONTENDERS = ("multiseg", "multiseg-model", "keras", "torch", "torch-compiled")
# multiseg-model only splits a gap: asked for by name.
DEFAULT_CONTENDERS = ("multiseg", "keras", "torch", "torch-compiled")
LABELS = {"multiseg": "multiseg", "multiseg-model": "multiseg, model only",
          "keras": "Keras, hand-written", "torch": "PyTorch eager",
          "torch-compiled": "PyTorch compiled"}
PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16"}  # -> train.precision
# The workers share one accelerator: JAX and TensorFlow take memory as they need it instead
# of most of it up front, so each process's peak is its own.
WORKER_ENV = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "TF_FORCE_GPU_ALLOW_GROWTH": "true",
              "TF_CPP_MIN_LOG_LEVEL": "2"}


class WorkerFailed(Exception):
    pass


class Worker:
    """A contender's process: messages from its standard output, commands to its input."""

    def __init__(self, name: str, config: dict, folder: str):
        self.name = name
        path = os.path.join(folder, f"{name}.json")
        with open(path, "w", encoding="utf-8") as handle:
            json.dump({**config, "contender": name}, handle)
        self.log_path = os.path.join(folder, f"{name}.log")
        self.log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115  (closed in stop)
        # Compilation caches start empty, as on a first run: PyTorch's inductor and Triton
        # keep theirs on disk. multiseg's on JAX is off, as the hand-written Keras model has
        # none (what a warm one saves: tools/bench/startup.py). TensorFlow keeps none.
        caches = {"TORCHINDUCTOR_CACHE_DIR": os.path.join(folder, "inductor"),
                  "TRITON_CACHE_DIR": os.path.join(folder, "triton"),
                  "MULTISEG_COMPILE_CACHE": "off"}
        env = {**WORKER_ENV, **os.environ, **caches, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "step_worker.py"), path], cwd=ROOT, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.messages: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            if line.startswith(PREFIX):
                self.messages.put(json.loads(line[len(PREFIX):]))
        self.messages.put(None)

    def receive(self, event: str, timeout: float) -> dict:
        try:
            message = self.messages.get(timeout=timeout)
        except queue.Empty:
            self.stop()
            raise WorkerFailed(f"no answer in {timeout:.0f} s (--timeout)") from None
        if message is None:
            raise WorkerFailed(f"the process ended (exit {self.process.wait()}):"
                               f" {self.log_tail()}")
        if message["event"] == "error":
            raise WorkerFailed(message["message"])
        if message["event"] != event:
            raise WorkerFailed(f"expected {event}, got {message['event']}")
        return message

    def command(self, text: str) -> None:
        try:
            self.process.stdin.write(text + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the process is gone: receive() says why

    def log_tail(self, lines: int = 6) -> str:
        self.log.flush()
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            tail = [line.rstrip() for line in handle if line.strip()][-lines:]
        return " | ".join(tail) or "nothing on standard error"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.command("quit")
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def median(values):
    return statistics.median(values) if values else None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average():
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def plan(args) -> tuple[dict, list[str], dict]:
    """The workers' shared config, the contenders to run, and notes (what is skipped, why)."""
    notes: dict[str, str] = {}
    base = recipe_lib.load(args.recipe, args.overrides, build=False)
    size = args.size or base.data.image_size[0]
    batch = args.batch or base.train.batch_size
    # One epoch holds every step of the run, and the data a few batches: the pipeline still
    # makes and augments every batch, but setup stays short at any size.
    overrides = [*args.overrides, f"data.image_size=[{size}, {size}]",
                 f"train.batch_size={batch}", f"data.train={4 * batch}", f"data.val={batch}",
                 "train.epochs=1",
                 f"train.steps_per_epoch="
                 f"{total_steps(args.warmup, args.repeats, args.steps, args.per_call)}",
                 f"train.precision={PRECISIONS[args.precision]}",
                 f"train.steps_per_execution={args.per_call}"]
    recipe = recipe_lib.load(args.recipe, overrides, build=False)

    from multiseg.data import build_data  # imports no framework: the source's channels

    channels = build_data(recipe, frequencies=False, log_report=False).channels
    spec = None
    try:
        spec = handmade.network_spec(recipe, channels=channels)
    except ValueError as exc:
        for name in ("keras", "torch", "torch-compiled"):
            notes[name] = f"skipped: {exc}"
    if importlib.util.find_spec("torch") is None:
        for name in ("torch", "torch-compiled"):
            notes.setdefault(name, "skipped: PyTorch is not installed")
    chosen = [c for c in args.contenders if c not in notes]
    config = {"recipe": os.path.abspath(args.recipe), "overrides": overrides, "spec": spec,
              "size": size, "batch": batch, "steps": args.steps, "warmup": args.warmup,
              "repeats": args.repeats, "precision": args.precision, "seed": base.seed,
              "gradflow_repeats": args.gradflow_repeats, "steps_per_execution": args.per_call}
    return config, chosen, notes


def race(args) -> dict:
    load_before = load_average()
    config, chosen, notes = plan(args)
    results = {name: {"ready": None, "blocks": []} for name in chosen}
    workers: dict[str, Worker] = {}
    gradflow = None
    with tempfile.TemporaryDirectory(prefix="bench-step-") as folder:
        config["output"] = os.path.join(folder, "multiseg-run")
        try:
            for name in chosen:  # one at a time: compilations must not overlap
                print(f"starting {LABELS[name]} ...", flush=True)
                worker = Worker(name, config, folder)
                try:
                    results[name]["ready"] = worker.receive("ready", args.timeout)
                    workers[name] = worker
                except WorkerFailed as exc:
                    notes[name] = f"failed: {exc}"
                    worker.stop()
            check_parameters(results, workers, notes)
            for rep in range(args.repeats):
                for name, worker in list(workers.items()):
                    worker.command("run")
                    try:
                        results[name]["blocks"].append(worker.receive("block", args.timeout))
                    except WorkerFailed as exc:
                        notes[name] = f"failed in repetition {rep + 1}: {exc}"
                        worker.stop()
                        del workers[name]
                print(f"repetition {rep + 1}/{args.repeats} done", flush=True)
            if args.gradflow and "multiseg" in workers:
                workers["multiseg"].command("gradflow")
                try:
                    gradflow = workers["multiseg"].receive("gradflow", args.timeout)
                except WorkerFailed as exc:
                    notes["gradflow"] = f"failed: {exc}"
        finally:
            for worker in workers.values():
                worker.stop()
    config["load_average"] = [load_before, load_average()]
    return summarise(args, config, results, notes, gradflow)


def check_parameters(results: dict, workers: dict, notes: dict) -> None:
    """The hand-written networks must be multiseg's: the same parameter count, or they leave."""
    ours = (results.get("multiseg", {}).get("ready") or {}).get("params")
    for name in list(workers):
        theirs = results[name]["ready"].get("params")
        if ours is not None and theirs != ours:
            notes[name] = (f"failed: {theirs} parameters, multiseg's model has {ours}: the"
                           " hand-written network no longer mirrors it")
            workers.pop(name).stop()
            results[name]["blocks"] = []


def summarise(args, config: dict, results: dict, notes: dict, gradflow: dict | None) -> dict:
    """Medians, ratios against multiseg, and everything measured, as one JSON-able dict."""
    out: dict = {"config": {k: v for k, v in config.items()
                            if k not in ("spec", "output", "load_average")},
                 "spec": config["spec"], "notes": notes,
                 "machine": machine(results, config.get("load_average")), "contenders": {}}
    ours = results.get("multiseg", {}).get("blocks", [])
    for name, result in results.items():
        ready, blocks = result["ready"], result["blocks"]
        if not ready or not blocks:
            continue
        per_rep = [median(b["times"]) for b in blocks]
        step = median(per_rep)
        last = blocks[-1]
        on_device = last["device_peak_mb"] is not None
        entry = {
            "step_s": step, "images_per_s": config["batch"] / step,
            # The fastest step: on a busy machine, the closest to a step's own cost.
            "fastest_step_s": min(min(b["times"]) for b in blocks),
            "first_step_s": ready["first_step_s"], "imports_s": ready["imports_s"],
            "setup_s": ready["setup_s"],
            "peak_memory_mb": last["device_peak_mb"] if on_device else last["host_peak_mb"],
            "memory_kind": "device" if on_device else "host RSS",
            "host_peak_mb": last["host_peak_mb"], "rss_after_imports_mb": ready["rss_imports_mb"],
            "device_peak_mb": last["device_peak_mb"], "device": last["device"],
            **{k: ready.get(k) for k in ("params", "compute_dtype", "jit_compile", "backend",
                                         "versions", "tensorflow_imported", "threads",
                                         "steps_per_execution")},
            "step_medians_s": per_rep, "step_times_s": [b["times"] for b in blocks],
        }
        if ours:
            pairs = zip([median(b["times"]) for b in ours], per_rep, strict=False)
            entry["multiseg_speed_ratio"] = median([theirs / mine for mine, theirs in pairs])
        out["contenders"][name] = entry
    ours_entry = out["contenders"].get("multiseg")
    if ours_entry:
        for entry in out["contenders"].values():
            entry["multiseg_memory_ratio"] = (ours_entry["peak_memory_mb"]
                                              / entry["peak_memory_mb"])
    if gradflow and ours_entry:
        out["gradflow"] = gradflow_figures(gradflow, ours_entry["step_s"], args.every)
    return out


def gradflow_figures(costs: dict, step: float, every: int) -> dict:
    """A snapshot's cost in multiseg training steps, and its share of training at ``every``:
    one logged snapshot (what the callback does) per ``every`` steps."""
    kinds = ("gradients", "snapshot", "logged", "trace")
    in_steps = {k: costs[k] / step for k in kinds}
    return {"seconds": {k: costs[k] for k in kinds}, "steps": in_steps,
            "heads": costs["heads"], "bound_steps": costs["heads"] + 1, "every": every,
            "overhead": in_steps["logged"] / every}


def machine(results: dict, load: list | None) -> dict:
    devices = {r["blocks"][-1]["device"] for r in results.values() if r["blocks"]}
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "devices": sorted(devices),
            "load_average_before_after": load,
            "keras_backend": next((r["ready"]["backend"] for n, r in results.items()
                                   if r["ready"] and not n.startswith("torch")), None)}


def report(out: dict) -> str:
    c, m = out["config"], out["machine"]
    device = ", ".join(d for d in m["devices"] if d != "cpu") or f"CPU only, {m['cores']} cores"
    load = m.get("load_average_before_after") or []
    lines = [f"{c['size']}x{c['size']} batch {c['batch']}, {c['precision']}, Keras backend"
             f" {m['keras_backend']}; {m['cpu']} ({device})",
             f"medians of {c['repeats']} interleaved repetitions of {c['steps']} steps (after"
             f" {c['warmup']} warm-up steps"
             + (f"; Keras contenders run {c['steps_per_execution']} steps per call"
                + (", PyTorch one" if any(n.startswith("torch") for n in out["contenders"])
                   else "")
                if c.get("steps_per_execution", 1) > 1 else "")
             + "); multiseg's speed and memory relative to each,"
             " side by side;"
             " load average before / after: "
             + " / ".join("?" if x is None else f"{x:.1f}" for x in load)]
    rows = out["contenders"]
    kind = next((e["memory_kind"] for e in rows.values()), "host RSS")
    lines.append(f"  {'':<20}{'images/s':>9}{'step ms':>9}{'fastest ms':>11}"
                 f"{'first step s':>14}{'peak ' + kind + ' MB':>20}{'speed':>8}"
                 f"{'memory':>8}")
    for name, e in rows.items():
        lines.append(f"  {LABELS[name]:<20}{e['images_per_s']:>9.1f}{1000 * e['step_s']:>9.1f}"
                     f"{1000 * e['fastest_step_s']:>11.1f}{e['first_step_s']:>14.1f}"
                     f"{e['peak_memory_mb']:>20.0f}"
                     f"{_fmt(e.get('multiseg_speed_ratio')):>8}"
                     f"{_fmt(e.get('multiseg_memory_ratio')):>8}")
    g = out.get("gradflow")
    if g:
        s = g["steps"]
        lines.append(f"gradflow snapshot, in multiseg training steps: gradients"
                     f" {s['gradients']:.2f}, with statistics {s['snapshot']:.2f}"
                     f" (bound k + 1 = {g['bound_steps']}), logged {s['logged']:.2f};"
                     f" the first traces once, {s['trace']:.1f} steps")
        lines.append(f"  at train.gradflow.every {g['every']}: {100 * g['overhead']:.1f}% of"
                     " training time (plus that one-off tracing)")
    for name, note in out["notes"].items():
        lines.append(f"note: {LABELS.get(name, name)}: {note}")
    return "\n".join(lines)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", nargs="?", default=os.path.join(ROOT, "recipes", "shapes.yaml"))
    parser.add_argument("--size", type=int, help="square image size (default: the recipe's)")
    parser.add_argument("--batch", type=int, help="batch size (default: the recipe's)")
    parser.add_argument("--steps", type=int, default=20, help="steps per turn (default 20)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed steps after the first (default 3)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="interleaved turns of each contender (default 5)")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="float32")
    parser.add_argument("--steps-per-execution", dest="per_call", type=int, default=1,
                        help="training steps per call of the Keras contenders (Keras's"
                             " steps_per_execution; --steps and --warmup are multiples of it)")
    parser.add_argument("--contenders", type=lambda s: [c.strip() for c in s.split(",")],
                        default=list(DEFAULT_CONTENDERS),
                        help=f"comma-separated, of {','.join(CONTENDERS)} (default"
                             f" {','.join(DEFAULT_CONTENDERS)}; multiseg always runs: it is"
                             " every ratio's reference)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY.PATH=VALUE", help="recipe override (repeatable)")
    parser.add_argument("--no-gradflow", dest="gradflow", action="store_false",
                        help="skip the gradflow snapshot cost")
    parser.add_argument("--every", type=int, default=100,
                        help="train.gradflow.every whose overhead is reported (default 100)")
    parser.add_argument("--gradflow-repeats", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds to wait for any one answer of a contender")
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args(argv)
    unknown = [c for c in args.contenders if c not in CONTENDERS]
    if unknown:
        parser.error(f"unknown contender(s) {unknown}; choose from {', '.join(CONTENDERS)}")
    if min(args.steps, args.repeats, args.every) < 1 or args.warmup < 0:
        parser.error("--steps, --repeats and --every must be at least 1, --warmup at least 0")
    if args.per_call < 1 or args.steps % args.per_call or args.warmup % args.per_call:
        parser.error(f"--steps ({args.steps}) and --warmup ({args.warmup}) must be multiples of"
                     f" --steps-per-execution ({args.per_call}), which is at least 1")
    if "multiseg" not in args.contenders:
        args.contenders.insert(0, "multiseg")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A plain kill would leave the contenders' processes behind: unwind, stopping them.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.perf_counter()
    try:
        out = race(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out["wall_s"] = time.perf_counter() - started
    print(report(out))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(out, handle, indent=1)
        print(f"written: {args.json}")
    failed = any(n.startswith("failed") for n in out["notes"].values())
    return 1 if failed or not out["contenders"] else 0


if __name__ == "__main__":
    sys.exit(main())
