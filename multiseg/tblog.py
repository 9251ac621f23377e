"""TensorBoard event files without TensorFlow: scalars, histograms, images and text.

``keras.callbacks.TensorBoard`` imports TensorFlow, which GPU machines running the JAX backend
may not have. The ``tensorboard`` package alone writes the same event files.
"""

from __future__ import annotations

import io
import os
import sys
import time
import types

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.histogram import summary_v2 as histogram_summary
from tensorboard.plugins.scalar import summary_v2 as scalar_summary
from tensorboard.plugins.text import summary_v2 as text_summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter


def _keep_tensorflow_out() -> None:
    """On another backend, TensorBoard's file writing uses its own TensorFlow stand-in.

    TensorBoard writes files through TensorFlow wherever TensorFlow is installed, which on JAX
    or PyTorch would import it (1 to 3 s, 430 MB, its start-up notices) for nothing else. A
    ``tensorboard.compat.notf`` module is TensorBoard's own switch to its stand-in, which writes
    local files (and S3 ones) as well; only ``gs://`` paths need TensorFlow.
    """
    if "tensorflow" in sys.modules or "tensorboard.compat.notf" in sys.modules:
        return
    keras = sys.modules.get("keras")
    backend = keras.backend.backend() if keras else os.environ.get("KERAS_BACKEND")
    if backend not in (None, "tensorflow"):
        sys.modules["tensorboard.compat.notf"] = types.ModuleType("tensorboard.compat.notf")


class SummaryWriter:
    """Writes one TensorBoard run (e.g. ``logs/train``)."""

    def __init__(self, logdir: str | os.PathLike):
        os.makedirs(logdir, exist_ok=True)
        _keep_tensorflow_out()
        self._writer = EventFileWriter(os.fspath(logdir), flush_secs=10)

    def _add(self, summary: summary_pb2.Summary, step: int) -> None:
        self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                               summary=summary))

    def scalar(self, tag: str, value: float, step: int, description: str | None = None) -> None:
        self._add(scalar_summary.scalar_pb(tag, float(value), description=description), step)

    def histogram(self, tag: str, values, step: int, buckets: int = 30) -> None:
        values = np.asarray(values, dtype=np.float64).ravel()
        self._add(histogram_summary.histogram_pb(tag, values, buckets=buckets), step)

    def text(self, tag: str, text: str, step: int) -> None:
        self._add(text_summary.text_pb(tag, text), step)

    def image_png(self, tag: str, png: bytes, step: int, *, height: int, width: int) -> None:
        image = summary_pb2.Summary.Image(height=height, width=width, colorspace=4,
                                          encoded_image_string=png)
        self._add(summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, image=image)]),
                  step)

    def image(self, tag: str, pixels: np.ndarray, step: int) -> None:
        """``pixels``: (H, W, 3) or (H, W) array in [0, 1], or uint8."""
        from PIL import Image

        array = np.asarray(pixels)
        if array.dtype != np.uint8:
            # A diverged model predicts NaN: show it black rather than fail.
            array = np.nan_to_num(np.clip(array, 0, 1), nan=0.0)
            array = (array * 255).round().astype(np.uint8)
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        buffer = io.BytesIO()
        Image.fromarray(array[..., :3]).convert("RGBA").save(buffer, format="PNG")
        self.image_png(tag, buffer.getvalue(), step, height=array.shape[0],
                       width=array.shape[1])

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
