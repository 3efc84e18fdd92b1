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


def read_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar logged in ``directory``'s event files, ``{tag: [(step, value), ...]}`` by step,
    as TensorBoard would show it: the files are read in the order they were written, and a resumed
    run's restart marker (see ``purge_step``) drops what the killed run logged from that step on."""
    import struct

    from tensorboardX.proto.event_pb2 import Event, SessionLog

    scalars: dict[str, dict[int, float]] = {}
    for path in sorted(Path(directory).glob("events.out.tfevents.*"), key=_first_wall_time):
        data, offset = path.read_bytes(), 0
        while offset + 12 <= len(data):  # a record: length (u64), its crc, the bytes, their crc
            (length,) = struct.unpack_from("<Q", data, offset)
            if offset + 16 + length > len(data):
                break  # a record cut short by a kill
            event = Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 16 + length
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                for values in scalars.values():
                    for step in [s for s in values if s >= event.step]:
                        del values[step]
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return {tag: sorted(values.items()) for tag, values in scalars.items()}


def _first_wall_time(path: Path) -> float:
    """When the file was begun: the wall time of its first event (its header)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    data = path.read_bytes()[:4096]
    if len(data) < 12:
        return float("inf")
    (length,) = struct.unpack_from("<Q", data, 0)
    try:
        return Event.FromString(data[12:12 + length]).wall_time
    except Exception:  # a damaged header: after every readable file
        return float("inf")
