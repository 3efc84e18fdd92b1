"""TensorBoard event files, written synchronously with tensorboardX's record writer (no
framework needed). Synchronous on purpose: ``flush`` returns only when every event is on
disk, so the curve up to a checkpoint survives a kill -9 with it (tensorboardX's
``SummaryWriter`` queues events for a background thread that a kill loses)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Mapping

import numpy as np


class EventLog:
    def __init__(self, directory: Path, purge_step: int | None = None):
        from tensorboardX.event_file_writer import EventsWriter

        # One file per process (the pid keeps a resumed run's file apart from the killed one's).
        self.writer = EventsWriter(str(Path(directory) / "events"), filename_suffix=f".{os.getpid()}")
        if purge_step is not None:
            # A resumed run: TensorBoard drops what the killed run logged from this step on.
            from tensorboardX.proto.event_pb2 import Event, SessionLog

            self._write(Event(step=purge_step, session_log=SessionLog(status=SessionLog.START)))

    def _write(self, event) -> None:
        event.wall_time = time.time()
        self.writer.write_event(event)

    def _summary(self, summary, step: int) -> None:
        from tensorboardX.proto.event_pb2 import Event

        self._write(Event(step=step, summary=summary))

    def scalars(self, values: Mapping[str, float], step: int, prefix: str = "") -> None:
        from tensorboardX.summary import scalar

        for name, value in values.items():
            self._summary(scalar(f"{prefix}{name}", float(value)), step)

    def image(self, tag: str, rgb: np.ndarray, step: int) -> None:
        """``rgb``: (H, W, 3) uint8."""
        from tensorboardX.summary import image

        self._summary(image(tag, rgb, dataformats="HWC"), step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
