"""TensorBoard event files (written with tensorboardX, so no framework is needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np


class EventLog:
    def __init__(self, directory: Path):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(logdir=str(directory), flush_secs=10)

    def scalars(self, values: Mapping[str, float], step: int, prefix: str = "") -> None:
        for name, value in values.items():
            self.writer.add_scalar(f"{prefix}{name}", value, step)

    def image(self, tag: str, rgb: np.ndarray, step: int) -> None:
        """``rgb``: (H, W, 3) uint8."""
        self.writer.add_image(tag, rgb, step, dataformats="HWC")

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
