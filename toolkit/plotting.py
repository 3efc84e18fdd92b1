"""Pictures of samples (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolkit.files import atomic_write


def scatter_against_data(samples: np.ndarray, reference: np.ndarray | None, path: Path | None,
                         title: str) -> np.ndarray:
    """A scatter of 2-D samples, beside the held-out data ``reference`` when given, as (H, W, 3)
    uint8, saved as PNG if ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(samples, "samples", "tab:orange")]
    if reference is not None:
        panels.insert(0, (reference, "data (held out)", "tab:blue"))
    lim = float(np.quantile(np.abs(samples if reference is None else reference), 0.999)) * 1.2
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.2), sharex=True, sharey=True,
                                squeeze=False)
    for axis, (points, name, color) in zip(axes[0], panels):
        axis.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5, color=color, linewidths=0)
        axis.set_title(name)
        axis.set_xlim(-lim, lim)
        axis.set_ylim(-lim, lim)
        axis.set_aspect("equal")
    figure.suptitle(title)
    figure.tight_layout()
    figure.canvas.draw()
    rgb = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
    if path is not None:
        with atomic_write(path) as handle:
            figure.savefig(handle, dpi=100, format="png")
    plt.close(figure)
    return rgb


def image_grid(images: np.ndarray, columns: int = 10, min_size: int = 32, pad: int = 1) -> np.ndarray:
    """Images (N, C, H, W) with values in [-1, 1] (C = 1 or 3) tiled row by row into one
    (H', W', 3) uint8 picture; images smaller than ``min_size`` are enlarged by an integer factor
    (nearest neighbour, so 8x8 digits stay sharp)."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images (N, C, H, W) with C = 1 or 3, got shape {images.shape}")
    n, channels, height, width = images.shape
    pixels = np.clip((images + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    if channels == 1:
        pixels = np.repeat(pixels, 3, axis=1)
    factor = max(1, -(-min_size // max(height, width)))
    pixels = pixels.repeat(factor, axis=2).repeat(factor, axis=3).transpose(0, 2, 3, 1)
    height, width = height * factor, width * factor
    columns = min(columns, n)
    rows = -(-n // columns)
    grid = np.full((rows * (height + pad) + pad, columns * (width + pad) + pad, 3), 255, dtype=np.uint8)
    for index, image in enumerate(pixels):
        top, left = pad + (index // columns) * (height + pad), pad + (index % columns) * (width + pad)
        grid[top:top + height, left:left + width] = image
    return grid


def save_rgb(rgb: np.ndarray, path: Path) -> None:
    """An (H, W, 3) uint8 picture as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image

    with atomic_write(path) as handle:
        matplotlib.image.imsave(handle, rgb, format="png")
