"""Pictures of samples (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def scatter_against_data(samples: np.ndarray, reference: np.ndarray, path: Path, title: str) -> np.ndarray:
    """Save a side-by-side scatter of 2-D data and samples as PNG; return it as (H, W, 3) uint8."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lim = float(np.quantile(np.abs(reference), 0.999)) * 1.2
    figure, axes = plt.subplots(1, 2, figsize=(8, 4.2), sharex=True, sharey=True)
    for axis, points, name, color in [(axes[0], reference, "data (held out)", "tab:blue"),
                                      (axes[1], samples, "samples", "tab:orange")]:
        axis.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5, color=color, linewidths=0)
        axis.set_title(name)
        axis.set_xlim(-lim, lim)
        axis.set_ylim(-lim, lim)
        axis.set_aspect("equal")
    figure.suptitle(title)
    figure.tight_layout()
    figure.canvas.draw()
    rgb = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return rgb
