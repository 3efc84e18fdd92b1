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
    as TensorBoard would show it: the files are read in the order they were begun (the wall time
    of their first event), and a resumed run's restart marker (see ``purge_step``) drops what the
    killed run logged from that step on."""
    from tensorboardX.proto.event_pb2 import SessionLog

    files = [_events(path) for path in Path(directory).glob("events.out.tfevents.*")]
    scalars: dict[str, dict[int, float]] = {}
    for events in sorted(files, key=lambda events: events[0].wall_time if events else float("inf")):
        for event in events:
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                for values in scalars.values():
                    for step in [s for s in values if s >= event.step]:
                        del values[step]
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return {tag: sorted(values.items()) for tag, values in scalars.items()}


def _events(path: Path) -> list:
    """The events of one file: records of length (u64), its crc, the bytes, their crc; a record
    cut short by a kill ends the file."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    data, offset, events = path.read_bytes(), 0, []
    while offset + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        if offset + 16 + length > len(data):
            break
        events.append(Event.FromString(data[offset + 12:offset + 12 + length]))
        offset += 16 + length
    return events
