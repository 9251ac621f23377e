"""The compact training display: plain lines for files, a redrawn bar for terminals, one table
per epoch whose figures are Keras's own."""

from __future__ import annotations

import io

import keras
import numpy as np
import pytest

from multiseg.callbacks.dispatch import DeviceLogCallbacks
from multiseg.callbacks.progress import Progress, epoch_table, format_duration

# "mask" and "mask_fine" share a prefix: their keys must not be mixed up.
WEIGHTS = {"mask": 1.0, "mask_fine": 0.5, "shape": 0.2}
MAIN = {"mask": "binary_accuracy", "mask_fine": None, "shape": "accuracy"}


def _model() -> keras.Model:
    keras.utils.set_random_seed(3)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    outputs = {
        "mask": keras.layers.Dense(1, activation="sigmoid", name="mask")(hidden),
        "mask_fine": keras.layers.Dense(1, activation="sigmoid", name="mask_fine")(hidden),
        "shape": keras.layers.Dense(3, activation="softmax", name="shape")(hidden),
    }
    model = keras.Model(inputs, outputs)
    model.compile("adam", loss={"mask": "binary_crossentropy", "mask_fine": "mse",
                                "shape": "sparse_categorical_crossentropy"},
                  loss_weights=WEIGHTS,
                  metrics={"mask": ["binary_accuracy"], "mask_fine": [],
                           "shape": ["accuracy"]})
    return model


def _data(count: int = 8):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(count, 4)).astype("float32")
    y = {"mask": (rng.random((count, 1)) > 0.5).astype("float32"),
         "mask_fine": rng.random((count, 1)).astype("float32"),
         "shape": rng.integers(0, 3, (count,))}
    return x, y


@pytest.fixture(scope="module")
def model():
    return _model()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _tables(text: str) -> list[list[list[str]]]:
    """Each epoch table's rows, split into words, the header line excluded."""
    tables, rows = [], None
    for line in text.splitlines():
        if line.startswith("epoch ") and " | " in line and "step " not in line.split(" | ")[1]:
            rows = []
            tables.append(rows)
        elif rows is not None and line.startswith("  ") and not line.split()[0] == "head":
            rows.append(line.split())
    return tables


def _screen(text: str) -> list[str]:
    """The lines a terminal shows for ``text``: each "\\r" writes over its line from the start."""
    lines = []
    for line in text.split("\n"):
        shown = ""
        for part in line.split("\r"):
            shown = part + shown[len(part):]
        lines.append(shown)
    return lines


class TestFormatDuration:
    CASES = [(0, "0:00"), (41, "0:41"), (61.4, "1:01"), (599.6, "10:00"),
             (3599.6, "1:00:00"), (3725, "1:02:05"), (-2, "0:00")]

    @pytest.mark.parametrize(("seconds", "text"), CASES)
    def test_cases(self, seconds, text):
        assert format_duration(seconds) == text


class TestEpochTable:
    def test_rows_in_order_with_weighted_losses(self):
        logs = {"loss": 1.5, "mask_fine_loss": 0.25, "mask_loss": 1.0, "mask_dice": 0.75,
                "shape_loss": 1.25, "shape_accuracy": 0.5,
                "val_loss": 2.0, "val_mask_loss": 1.5, "val_mask_fine_loss": 0.5,
                "val_mask_dice": 0.625, "val_shape_loss": 1.0, "val_shape_accuracy": 0.25}
        lines = epoch_table(logs, {"mask": 1.0, "mask_fine": 0.5, "shape": 0.2},
                            {"mask": "dice", "mask_fine": None, "shape": "accuracy"})
        assert lines[0].split() == ["head", "loss", "val", "weighted", "val", "metric",
                                    "train", "val"]
        # weighted = loss_weight * loss: 0.5 * 0.25, 0.5 * 0.5, 0.2 * 1.25, 0.2 * 1.0
        assert [line.split() for line in lines[1:]] == [
            ["mask", "1.0000", "1.5000", "1.0000", "1.5000", "dice", "0.7500", "0.6250"],
            ["mask_fine", "0.2500", "0.5000", "0.1250", "0.2500"],
            ["shape", "1.2500", "1.0000", "0.2500", "0.2000", "accuracy", "0.5000", "0.2500"],
            ["total", "1.5000", "2.0000"],
        ]
        # Figures stay in their columns: the total under "weighted", the metrics aligned.
        assert lines[4].index("1.5000") == lines[1].index("1.0000", 30)
        assert lines[1].index("dice") == lines[3].index("accuracy")

    def test_without_validation_or_main_metrics(self):
        logs = {"loss": 0.5, "mask_loss": 0.5, "mask_iou": 0.25, "mask_dice": 0.75,
                "mask_dice_term": 0.3, "mask_weighted_loss": 0.5}
        lines = epoch_table(logs, {"mask": 1.0})
        # No "val" columns; the first metric by name, never a term or a weighted loss.
        assert lines[0].split() == ["head", "loss", "weighted", "metric", "train"]
        assert lines[1].split() == ["mask", "0.5000", "0.5000", "dice", "0.7500"]

    def test_one_output_model(self):
        # Keras logs one output's figures without the head's name, its total weighted.
        logs = {"loss": 0.3, "binary_accuracy": 0.875}
        lines = epoch_table(logs, {"mask": 0.5}, {"mask": "binary_accuracy"})
        assert lines[1].split() == ["mask", "0.6000", "0.3000", "binary_accuracy", "0.8750"]

    def test_missing_figures_show_a_dash(self):
        lines = epoch_table({"loss": 1.0}, {"a": 1.0, "b": 2.0}, {"a": "dice", "b": None})
        assert lines[1].split() == ["a", "-", "-", "dice", "-"]


class TestProgress:
    def test_plain_output_matches_history(self, model):
        x, y = _data()
        out = io.StringIO()
        progress = Progress(WEIGHTS, MAIN, epochs=2, steps_per_epoch=2, stream=out)
        history = model.fit(x, y, batch_size=4, epochs=2, verbose=0, validation_data=(x, y),
                            callbacks=[progress]).history
        text = out.getvalue()
        assert "\x1b" not in text and "\r" not in text
        assert all(len(line) < 100 for line in text.splitlines())
        assert "epoch 1/2 | 2 steps | " in text and "epoch 2/2 | 2 steps | " in text
        tables = _tables(text)
        assert len(tables) == 2
        for epoch, rows in enumerate(tables):
            assert [row[0] for row in rows] == ["mask", "mask_fine", "shape", "total"]
            for row in rows[:3]:
                head, weight = row[0], WEIGHTS[row[0]]
                loss = history[f"{head}_loss"][epoch]
                val = history[f"val_{head}_loss"][epoch]
                assert row[1:5] == [f"{loss:.4f}", f"{val:.4f}", f"{weight * loss:.4f}",
                                    f"{weight * val:.4f}"]
                if MAIN[head]:
                    assert row[5:] == [MAIN[head],
                                       f"{history[f'{head}_{MAIN[head]}'][epoch]:.4f}",
                                       f"{history[f'val_{head}_{MAIN[head]}'][epoch]:.4f}"]
                else:
                    assert len(row) == 5
            assert rows[3][1:] == [f"{history['loss'][epoch]:.4f}",
                                   f"{history['val_loss'][epoch]:.4f}"]

    def test_resumed_run_shows_the_real_epoch(self, model):
        x, y = _data()
        out = io.StringIO()
        model.fit(x, y, batch_size=4, initial_epoch=2, epochs=3, verbose=0,
                  callbacks=[Progress(WEIGHTS, MAIN, epochs=5, stream=out)])
        text = out.getvalue()
        assert "epoch 3/5 | 2 steps | " in text
        assert "epoch 3/3" not in text and "epoch 1/" not in text
        assert len(_tables(text)) == 1

    def test_cut_epoch_counts_the_steps_done_before(self, model):
        x, y = _data(16)
        out = io.StringIO()
        # An epoch of 8 steps cut after step 6: the rest is 2 steps (4 samples, batch 2).
        progress = Progress(WEIGHTS, MAIN, epochs=4, steps_per_epoch=8, start_step=6,
                            stream=out)
        progress.plain_seconds = 0
        model.fit(x[:4], {k: v[:4] for k, v in y.items()}, batch_size=2, initial_epoch=1,
                  epochs=2, verbose=0, callbacks=[progress])
        assert progress.start_step == 0
        model.fit(x, y, batch_size=2, initial_epoch=2, epochs=3, verbose=0,
                  callbacks=[progress])
        lines = out.getvalue().splitlines()
        headers = [line for line in lines if line.startswith("epoch ") and "lr" in line]
        assert headers[0].startswith("epoch 2/4 | steps 7-8 of 8 | ")
        assert headers[1].startswith("epoch 3/4 | 8 steps | ")
        # Plain progress lines at 25%, 50% and 75% of the whole epoch; the cut one had passed
        # its quarters (6 of 8 steps) before it was resumed.
        steps = [line.split(" | ")[:2] for line in lines if " | step " in line]
        assert steps == [["epoch 3/4", "step 2/8"], ["epoch 3/4", "step 4/8"],
                         ["epoch 3/4", "step 6/8"]]
        assert "\r" not in out.getvalue()

    # Keras's callback list hands it numbers; multiseg's trainer, the backend's arrays.
    @pytest.mark.parametrize("logs", ["numbers", "device arrays"])
    def test_interactive_bar(self, model, logs):
        x, y = _data()
        out = io.StringIO()
        progress = Progress(WEIGHTS, MAIN, epochs=2, stream=out, interactive=True, width=60)
        progress.redraw_seconds = 0
        callbacks = ([progress] if logs == "numbers" else
                     DeviceLogCallbacks([progress], model=model, epochs=1, steps=4))
        history = model.fit(x, y, batch_size=2, epochs=1, verbose=0, validation_data=(x, y),
                            callbacks=callbacks).history
        text = out.getvalue()
        assert "\x1b" not in text  # the bar is redrawn with "\r" and spaces only
        drawn = [part for line in text.split("\n") for part in line.split("\r")
                 if part.startswith("epoch 1/2 [")]
        # One drawing per step, then one while validating.
        assert [d.split("] ")[1].split()[0] for d in drawn] == ["1/4", "2/4", "3/4", "4/4",
                                                                "4/4"]
        assert all(" loss " in d and " eta " in d for d in drawn[:4])
        assert "validating" in drawn[-1]
        assert f" loss {history['loss'][0]:.4f} " in drawn[3]
        assert all(len(d) <= 60 for d in drawn)
        # The bar is cleared (overwritten with spaces) before the table starts its line.
        header = _screen(text)[0]
        assert header.startswith("epoch 1/2 | 4 steps | ") and "[" not in header
        assert "\r" not in text.partition("epoch 1/2 | 4 steps | ")[2]
        assert all(len(part) < 100 for line in text.split("\n") for part in line.split("\r"))

    def test_a_shorter_redraw_leaves_nothing_behind(self):
        out = io.StringIO()
        progress = Progress(WEIGHTS, stream=out, interactive=True, width=60)
        progress.on_train_begin()  # outside fit: no model needed to draw
        progress._draw("epoch 1/2 " + "x" * 40)
        progress._draw("epoch 1/2 nan")
        assert _screen(out.getvalue()) == ["epoch 1/2 nan".ljust(50)]
        progress.on_train_end()  # clears the bar
        assert _screen(out.getvalue()) == [" " * 50]

    def test_interactive_follows_the_stream(self, model):
        x, y = _data()
        terminal, file = Terminal(), io.StringIO()
        model.fit(x, y, batch_size=4, epochs=1, verbose=0,
                  callbacks=[Progress(WEIGHTS, MAIN, stream=terminal),
                             Progress(WEIGHTS, MAIN, stream=file)])
        assert "\r" in terminal.getvalue() and "\r" not in file.getvalue()
        # The total read from fit when not given.
        assert "epoch 1/1 | 2 steps" in file.getvalue()

    @pytest.mark.parametrize(("kwargs", "message"), [
        ({"heads": {}}, "heads must map each head's name"),
        ({"main_metrics": {"mask_fien": "dice"}}, "Did you mean 'mask_fine'"),
        ({"epochs": 0}, "epochs must be a whole number"),
        ({"steps_per_epoch": 2.5}, "steps_per_epoch must be a whole number"),
        ({"width": 10}, "width must be 40 to 99"),
        ({"steps_per_epoch": 4, "start_step": 4}, "start_step .* must be a whole number"),
        ({"start_step": -1}, "start_step .* must be a whole number"),
    ])
    def test_refused_arguments(self, kwargs, message):
        arguments = {"heads": WEIGHTS, **kwargs}
        with pytest.raises(ValueError, match=message):
            Progress(**arguments)
