"""Picture of a trained nuclei run's predictions on its held-out validation tiles.

    python -m multiseg.train recipes/nuclei.yaml
    python tools/nuclei_figure.py runs/nuclei [--out docs/img/nuclei_predictions.png]

One row per validation tile: the image, the reference (nuclei filled, their contours in
white), the predicted nucleus mask and the predicted contours; the row title gives the tile's
nucleus-count class, true and predicted.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import multiseg  # noqa: E402, F401  (first: it quiets TensorFlow before Keras loads)

# isort: split
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from multiseg import load_model  # noqa: E402
from multiseg import recipe as recipe_lib  # noqa: E402
from multiseg.data import build_data, head_targets, target_names  # noqa: E402
from multiseg.data.sources import source_targets  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run directory of recipes/nuclei.yaml")
    parser.add_argument("--out", default="docs/img/nuclei_predictions.png")
    args = parser.parse_args()
    recipe = recipe_lib.load(os.path.join(args.run, "recipe.yaml"))
    data = build_data(recipe, frequencies=False)
    model = load_model(os.path.join(args.run, "model.keras"), compile=False)
    infos = source_targets(recipe.data.source.kind, recipe.data.source.options)
    names = {t.head: target_names(t, infos) for t in head_targets(recipe)}
    batches = [data.val[i] for i in range(len(data.val))]
    images = np.concatenate([b[0] for b in batches])
    targets = {h: np.concatenate([b[1][h] for b in batches]) for h in recipe.heads}
    logits = model.predict(images, verbose=0)
    prob = {h: 1 / (1 + np.exp(-np.asarray(v, np.float64))) for h, v in logits.items()}

    rows = len(images)
    fig, axes = plt.subplots(rows, 4, figsize=(9, 2.35 * rows), squeeze=False)
    titles = ["image", "reference", "predicted nucleus", "predicted contour"]
    for r in range(rows):
        truth = np.zeros((*images.shape[1:3], 3))
        truth[..., 1] = targets["nucleus"][r, ..., 0] * 0.7
        truth[targets["contour"][r, ..., 0] > 0] = 1.0
        panels = [images[r, ..., 0], truth, prob["nucleus"][r, ..., 0],
                  prob["contour"][r, ..., 0]]
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(panel, cmap=None if panel.ndim == 3 else "gray",
                      vmin=0 if c else np.percentile(panel, 1), vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=10)
        true_label = names["density"][int(targets["density"][r])]
        pred_label = names["density"][int(np.argmax(logits["density"][r]))]
        axes[r, 0].set_ylabel(f"tile {r + 1}: {true_label}\npredicted {pred_label}",
                              fontsize=8)
    fig.suptitle("nuclei recipe: held-out validation tiles (BBBC038, CC0)", fontsize=11)
    fig.tight_layout()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
