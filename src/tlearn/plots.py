"""PNG figures for reports/ (matplotlib, headless). DVC's HTML plots need a CDN; these don't."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tlearn.io import atomic_path  # noqa: E402


def save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def image_grid(rows: Sequence[Sequence[np.ndarray]], path: Path,
               column_titles: Sequence[str] = (), row_titles: Sequence[str] = ()) -> None:
    """A grid of uint8 RGB images; ``rows[r][c]`` goes to row r, column c."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.6 * n_cols, 1.6 * n_rows), squeeze=False)
    for r, ax_row in enumerate(axes):
        for c, ax in enumerate(ax_row):
            ax.axis("off")
            if c < len(rows[r]):
                ax.imshow(rows[r][c])
            if r == 0 and c < len(column_titles):
                ax.set_title(column_titles[c], fontsize=8)
            if c == 0 and r < len(row_titles):
                ax.text(-0.05, 0.5, row_titles[r], fontsize=7, ha="right", va="center",
                        transform=ax.transAxes)
    save(fig, path)
