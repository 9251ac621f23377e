"""A compact training display: a one-line bar while an epoch runs, a short table per epoch.

Keras's own progress bar prints every figure of every head on one line (hundreds of
characters a step; in a file, one line per epoch full of escape codes). ``Progress`` replaces
it: run ``model.fit(..., verbose=0, callbacks=[..., Progress(...)])``.
"""

from __future__ import annotations

import difflib
import math
import shutil
import sys
import time
from collections.abc import Mapping
from typing import TextIO

import keras
import numpy as np

from multiseg.callbacks.logs import current_learning_rate, nest_logs
from multiseg.weighting.model import current_weights

MAX_WIDTH = 99  # the longest line written: lines stay under 100 characters
MIN_WIDTH = 40
BAR_MAX = 30  # the bar's own length at most, however wide the terminal
NUMBER = 8  # a figure's column: "999.9999"


def format_duration(seconds: float) -> str:
    """``m:ss`` under an hour, ``h:mm:ss`` from then on: 41 -> ``0:41``, 3725 -> ``1:02:05``."""
    whole = max(0, int(round(seconds)))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _split_logs(logs: Mapping, heads) -> tuple[dict, dict]:
    """Train and validation figures, each nested by head (:func:`nest_logs`); scalars only."""
    train, val = {}, {}
    for key, value in logs.items():
        if not np.isscalar(value) and np.ndim(value) != 0:
            continue
        if key.startswith("val_"):
            val[key[len("val_"):]] = value
        else:
            train[key] = value
    return nest_logs(train, heads), nest_logs(val, heads)


def _head_loss(nested: dict, head: str, weights: Mapping[str, float]) -> float | None:
    loss = nested.get(head, {}).get("loss")
    if loss is None and len(weights) == 1 and weights[head]:
        # Keras logs no ``<head>_loss`` for a one-output model: its total is weight * loss
        # (the models have no regularization losses).
        total = nested.get("total", {}).get("loss")
        loss = None if total is None else total / weights[head]
    return loss


def _metric(nested: dict, head: str, name: str, single: bool) -> float | None:
    value = nested.get(head, {}).get(name)
    if value is None and single:  # one-output models log metrics without the head prefix
        value = nested.get("other", {}).get(name)
    return value


def _first_metric(nested: dict, head: str, single: bool) -> str | None:
    """The head's first metric by name: neither a loss, a weighted loss nor a loss term."""
    names = nested.get(head, {})
    if single and not any(n != "loss" for n in names):
        names = nested.get("other", {})
    found = sorted(n for n in names if n not in ("loss", "weighted_loss")
                   and not n.endswith("_term"))
    return found[0] if found else None


def epoch_table(logs: Mapping, loss_weights: Mapping[str, float],
                main_metrics: Mapping[str, str | None] | None = None) -> list[str]:
    """The epoch's figures as aligned lines: a header, one line per head in the order of
    ``loss_weights``, then the total (under "weighted": the weighted losses add up to it).

    Columns: loss and weighted loss (``loss_weight * loss``), the main metric's name, its
    train figure; each followed by the validation one when ``logs`` hold ``val_`` keys.
    A head missing from ``main_metrics`` shows its first metric by name; ``None``, none.
    """
    heads = list(loss_weights)
    single = len(heads) == 1
    train, val = _split_logs(logs, heads)
    has_val = bool(val)
    chosen = {}
    for head in heads:
        if main_metrics is not None and head in main_metrics:
            chosen[head] = main_metrics[head]
        else:
            chosen[head] = _first_metric(train, head, single) or _first_metric(val, head, single)
    has_metric = any(chosen.values())
    name_w = max(len("total"), *(len(h) for h in heads))
    metric_w = max([len("metric")] + [len(m) for m in chosen.values() if m])

    def numbers(*values: float | None) -> str:
        return "".join(f"  {_figure(v):>{NUMBER}}" for v in values)

    def columns(*titles: str) -> str:
        return "".join(f"  {t:>{NUMBER}}" for t in titles)

    runs = (train, val) if has_val else (train,)
    pair = ("val",) if has_val else ()
    header = f"  {'head':<{name_w}}" + columns("loss", *pair, "weighted", *pair)
    if has_metric:
        header += f"  {'metric':<{metric_w}}" + columns("train", *pair)
    lines = [header]
    for head in heads:
        losses = [_head_loss(run, head, loss_weights) for run in runs]
        weight = float(loss_weights[head])
        # A weighting method logs its exact weighted loss; constant weights, weight * loss.
        logged = [run.get(head, {}).get("weighted_loss") for run in runs]
        line = f"  {head:<{name_w}}" + numbers(*losses) + numbers(
            *(w if w is not None else None if loss is None else weight * loss
              for w, loss in zip(logged, losses, strict=True)))
        metric = chosen[head]
        if metric:
            line += f"  {metric:<{metric_w}}" + numbers(
                *(_metric(run, head, metric, single) for run in runs))
        lines.append(line)
    totals = [run.get("total", {}).get("loss") for run in runs]
    lines.append(f"  {'total':<{name_w}}" + " " * ((NUMBER + 2) * len(runs)) + numbers(*totals))
    return lines


def _steps_text(first: int, last: int, steps: int | None) -> str:
    if steps is not None and first == 1 and last == steps:
        return f"{steps} step{'' if steps == 1 else 's'}"
    of = f" of {steps}" if steps is not None else ""
    return f"step {last}{of}" if first == last else f"steps {first}-{last}{of}"


class Progress(keras.callbacks.Callback):
    """A compact training display for ``model.fit(..., verbose=0)``.

    While an epoch runs, on a terminal: one line redrawn with ``"\\r"`` (at most every
    ``redraw_seconds``): the epoch, a bar, the step, the running total loss, the time spent
    and the estimated time left. Elsewhere (a file, a pipe, CI): plain lines only, no escape
    codes and no ``"\\r"``; a long epoch writes a progress line at 25%, 50% and 75% when at
    least ``plain_seconds`` have passed since the last line. At each epoch's end (the bar
    cleared first): ``epoch 3/10 | 48 steps | 0:41 | lr 0.001`` and :func:`epoch_table`.

    The epoch shown is Keras's (``initial_epoch`` counts) out of ``epochs``, the run's total,
    so a resumed run says ``epoch 3/10``. To finish an epoch cut short at step ``s``, set
    ``start_step = s`` before that ``fit`` (whose ``steps_per_epoch`` is the rest,
    ``steps_per_epoch - s``): its first epoch then counts steps ``s+1`` to ``steps_per_epoch``,
    and ``start_step`` returns to 0 when that epoch ends.

    Args:
        heads: each head's name and loss weight, in the recipe's order: ``{"mask": 1.0}``.
            Log keys are matched to the longest head name (``mask`` and ``mask_fine``).
        main_metrics: each head's main metric as Keras logs it after ``<head>_``
            (``"dice"``, ``"accuracy"``); ``None`` for none. A head left out (or all of them,
            with ``main_metrics=None``) shows its first metric by name.
        epochs: the run's total number of epochs; default ``fit``'s ``epochs``.
        steps_per_epoch: the steps of a whole epoch; default ``start_step`` plus ``fit``'s.
        start_step: steps already done of the first epoch of the next ``fit`` (default 0).
        stream: where to write; default ``sys.stdout`` at the time of writing.
        interactive: redraw a bar with ``"\\r"``; default ``stream.isatty()``.
        width: the longest bar line; default the terminal's width less one, at most 99.

    Raises:
        ValueError: for no heads, a ``main_metrics`` head that is not in ``heads``, or a
            count, ``start_step`` or width out of range.

    Example:
        >>> progress = Progress({"mask": 1.0, "shape": 0.2}, {"mask": "dice", "shape": None},
        ...                     epochs=10, steps_per_epoch=48)
        >>> progress.start_step = 12  # resuming epoch 3 after its step 12
        >>> # model.fit(..., steps_per_epoch=36, initial_epoch=2, epochs=3, verbose=0,
        >>> #           callbacks=[progress])
    """

    takes_device_logs = True

    redraw_seconds = 0.1  # a terminal bar is redrawn at most this often
    plain_seconds = 30.0  # plain progress lines at least this far apart (and at quarters)

    def __init__(self, heads: Mapping[str, float],
                 main_metrics: Mapping[str, str | None] | None = None, *,
                 epochs: int | None = None, steps_per_epoch: int | None = None,
                 start_step: int = 0, stream: TextIO | None = None,
                 interactive: bool | None = None, width: int | None = None):
        super().__init__()
        if not isinstance(heads, Mapping) or not heads:
            raise ValueError(f"Progress: heads must map each head's name to its loss weight,"
                             f" e.g. {{'mask': 1.0}}; got {heads!r}")
        self.heads = {str(name): float(weight) for name, weight in heads.items()}
        unknown = sorted(set(main_metrics or {}) - set(self.heads))
        if unknown:
            close = difflib.get_close_matches(unknown[0], self.heads, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"Progress: main_metrics names heads {unknown} that are not in"
                             f" heads {list(self.heads)}.{hint}")
        self.main_metrics = None if main_metrics is None else dict(main_metrics)
        for name, value in (("epochs", epochs), ("steps_per_epoch", steps_per_epoch)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"Progress: {name} must be a whole number >= 1 or None"
                                 f" (read from fit); got {value!r}")
        if (not isinstance(start_step, int) or start_step < 0
                or (steps_per_epoch is not None and start_step >= steps_per_epoch)):
            raise ValueError(f"Progress: start_step (the steps done of a cut epoch) must be a"
                             f" whole number from 0 to steps_per_epoch - 1; got {start_step!r}")
        if width is not None and not MIN_WIDTH <= width <= MAX_WIDTH:
            raise ValueError(f"Progress: width must be {MIN_WIDTH} to {MAX_WIDTH} characters;"
                             f" got {width!r}")
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.start_step = start_step
        self.stream = stream
        self.interactive = interactive
        self.width = width
        self._live = False  # this fit redraws a bar
        self._width = width or MAX_WIDTH
        self._total = epochs or 0
        self._drawn = 0  # length of the bar on screen, 0 when none
        self._epoch: int | None = None  # the epoch running, None between epochs
        self._first = 0  # steps done before this fit's part of the epoch
        self._steps: int | None = steps_per_epoch  # the whole epoch's steps, if known
        self._done = 0  # steps done by this fit in this epoch
        # The running total loss as logged: a number, or a device array read only when a line
        # is drawn (multiseg.callbacks.dispatch).
        self._loss = None
        self._started = self._after_first = self._last_draw = self._last_plain = 0.0
        self._quarter = 1  # the next quarter of the epoch a plain line may mark

    # -- writing --------------------------------------------------------------------------

    def _out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stdout

    def _write(self, text: str) -> None:
        out = self._out()
        out.write(text)
        out.flush()

    def _clear(self) -> None:
        if self._drawn:
            self._write("\r" + " " * self._drawn + "\r")
            self._drawn = 0

    def _draw(self, line: str) -> None:
        line = line[: self._width]
        self._write("\r" + line.ljust(self._drawn))
        self._drawn = len(line)

    # -- what is shown ----------------------------------------------------------------------

    def _step(self) -> int:
        return self._first + self._done

    def _quarters_passed(self, step: int) -> int:
        """How many of the marks at 25%, 50% and 75% of the epoch ``step`` has reached."""
        if self._steps is None or self._steps < 4:
            return 0
        return sum(step >= math.ceil(q * self._steps / 4) for q in (1, 2, 3))

    def _eta(self, now: float) -> float | None:
        if self._steps is None or not self._done:
            return None
        # The first step carries the graph's tracing: time the rate on the later ones.
        if self._done >= 2:
            rate = (now - self._after_first) / (self._done - 1)
        else:
            rate = now - self._started
        return max(0, self._steps - self._step()) * rate

    def _loss_now(self) -> float | None:
        return None if self._loss is None else float(self._loss)

    def _bar_line(self, now: float, validating: bool = False) -> str:
        of = f"/{self._steps}" if self._steps is not None else ""
        left = f"epoch {self._epoch + 1}/{self._total} "
        right = f" {self._step()}{of} loss {_figure(self._loss_now())} "
        right += format_duration(now - self._started)
        eta = self._eta(now)
        if validating:
            right += " validating"
        elif eta is not None:
            right += f" eta {format_duration(eta)}"
        room = min(BAR_MAX, self._width - len(left) - len(right) - 2)
        if self._steps is None or room < 5:
            return (left.rstrip() + right)[: self._width]
        done = min(room, room * self._step() // self._steps)
        bar = "=" * done + (">" if done < room else "") + "." * max(0, room - done - 1)
        return f"{left}[{bar}]{right}"

    def _plain_line(self, now: float) -> str:
        of = f"/{self._steps}" if self._steps is not None else ""
        line = (f"epoch {self._epoch + 1}/{self._total} | step {self._step()}{of} |"
                f" loss {_figure(self._loss_now())} | {format_duration(now - self._started)}")
        eta = self._eta(now)
        return line + (f", eta {format_duration(eta)}" if eta is not None else "")

    # -- Keras hooks ------------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        out = self._out()
        if self.interactive is None:
            isatty = getattr(out, "isatty", None)
            self._live = bool(isatty()) if callable(isatty) else False
        else:
            self._live = bool(self.interactive)
        if self.width is not None:
            self._width = self.width
        elif self._live:
            columns = shutil.get_terminal_size((MAX_WIDTH + 1, 24)).columns - 1
            self._width = max(MIN_WIDTH, min(MAX_WIDTH, columns))
        else:
            self._width = MAX_WIDTH
        self._total = self.epochs or (self.params or {}).get("epochs") or 0

    def on_epoch_begin(self, epoch, logs=None):
        fit_steps = (self.params or {}).get("steps")
        self._epoch = epoch
        self._first = int(self.start_step)
        self._steps = self.steps_per_epoch or (
            self._first + fit_steps if fit_steps is not None else None)
        self._done = 0
        self._loss = None
        self._started = self._after_first = self._last_draw = self._last_plain = time.monotonic()
        self._quarter = self._quarters_passed(self._first) + 1

    def on_train_batch_end(self, batch, logs=None):
        if self._epoch is None:
            return
        now = time.monotonic()
        self._done = batch + 1
        if self._done == 1:
            self._after_first = now
        loss = (logs or {}).get("loss")
        if loss is not None and np.ndim(loss) == 0:
            self._loss = loss
        if self._live:
            last = self._steps is not None and self._step() >= self._steps
            if self._done == 1 or last or now - self._last_draw >= self.redraw_seconds:
                self._draw(self._bar_line(now))
                self._last_draw = now
        elif self._quarters_passed(self._step()) >= self._quarter:
            self._quarter = self._quarters_passed(self._step()) + 1
            if now - self._last_plain >= self.plain_seconds:
                self._write(self._plain_line(now) + "\n")
                self._last_plain = now

    def on_test_begin(self, logs=None):
        if self._live and self._epoch is not None and self._done:
            self._draw(self._bar_line(time.monotonic(), validating=True))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        now = time.monotonic()
        self._clear()
        head = [f"epoch {epoch + 1}/{self._total}"]
        if self._epoch == epoch and self._done:
            head.append(_steps_text(self._first + 1, self._first + self._done, self._steps))
            head.append(format_duration(now - self._started))
        try:
            head.append(f"lr {current_learning_rate(self.model):.3g}")
        except (AttributeError, TypeError, ValueError):
            pass  # no optimizer, or a rate that is not a number
        lines = [" | ".join(head), *epoch_table(logs, self.heads, self.main_metrics)]
        weights = current_weights(self.model) if self.model is not None else None
        if weights is not None:  # a weighting method's weights, as the last step used them
            lines.append("  loss weights: " + ", ".join(f"{h} {w:.4g}"
                                                        for h, w in weights.items()))
        self._write("\n".join(lines) + "\n")
        self.start_step = 0
        self._epoch = None

    def on_train_end(self, logs=None):
        self._clear()
