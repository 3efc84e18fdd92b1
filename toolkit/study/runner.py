"""Running a study's cells: skip the finished, resume the interrupted, record the failed.

A cell's directory is an ordinary run directory. Its state is read from disk, so a killed study
continues where it stopped: ``metrics.json`` means finished, a checkpoint means resumable, a
``failed.txt`` (the error of the last attempt) means try again. A finished cell whose stored
config differs from the study's is an error unless the caller asks to re-run it, so a table
never mixes numbers of two versions of a study.
"""

from __future__ import annotations

import gc
import math
import sys
import time
from typing import Sequence

import attrs

from toolkit.checkpoint import checkpoint_step, config_differences, list_checkpoints
from toolkit.errors import ToolkitError, UsageError
from toolkit.files import read_json, write_text
from toolkit.study.grid import Cell

FAILED = "failed.txt"


@attrs.frozen
class CellOutcome:
    cell: Cell
    status: str  # "finished" (this time), "done" (before), "failed"
    error: str | None = None


def cell_state(cell: Cell) -> tuple[str, int]:
    """``(state, steps already trained)``: ``done``, ``resume`` (from a checkpoint), ``changed``
    (finished or started with another config) or ``new``."""
    stored = cell.stored_config()
    if stored is not None and config_differences(stored, cell.config, ignore=("logging.progress",)):
        return "changed", 0
    if (cell.out_dir / "metrics.json").is_file() and stored is not None:
        return "done", cell.steps
    found = list_checkpoints(cell.out_dir / "checkpoints")
    if found and stored is not None:
        return "resume", checkpoint_step(found[-1])
    return "new", 0


def cell_metrics(cell: Cell) -> dict:
    """A finished cell's ``metrics.json``; a damaged one is an error naming it and the way out."""
    try:
        return read_json(cell.out_dir / "metrics.json")
    except ToolkitError as error:
        raise ToolkitError(f"{error}: delete it and run the study again to evaluate the cell again") from None


def run_cells(cells: Sequence[Cell], backend: str, registry, progress: bool = True,
              rerun_changed: bool = False) -> list[CellOutcome]:
    """Train every cell that is not finished, one after another, with one progress display over
    the whole grid (in training steps). A cell that fails is recorded (``failed.txt``) and the
    others go on."""
    from toolkit.train import train

    states = {cell.out_dir: cell_state(cell) for cell in cells}
    changed = [cell for cell in cells if states[cell.out_dir][0] == "changed"]
    if changed and not rerun_changed:
        cell = changed[0]
        key, old, new = config_differences(cell.stored_config(), cell.config, ignore=("logging.progress",))[0]
        raise UsageError(f"{len(changed)} cell(s) of this study were run with another config, e.g. {cell.out_dir} "
                         f"({key}: {old!r} there, {new!r} now); pass --rerun-changed to train them again, or "
                         f"choose another --out")
    bar = _GridProgress(sum(c.steps for c in cells), sum(states[c.out_dir][1] for c in cells), len(cells), progress,
                        cells[0].config.eval.metric.name if cells else "")
    outcomes = []
    try:
        for index, cell in enumerate(cells, 1):
            state, done = states[cell.out_dir]
            if state == "done":
                try:
                    cell_metrics(cell)
                except ToolkitError as error:
                    outcomes.append(CellOutcome(cell, "failed", str(error)))
                else:
                    outcomes.append(CellOutcome(cell, "done"))
                continue
            (cell.out_dir / FAILED).unlink(missing_ok=True)
            bar.start(cell, index, done)
            try:
                results = train(cell.config, backend, registry, out_dir=cell.out_dir, progress=False,
                      overwrite=state != "resume", resume=state == "resume", on_log=bar.on_log)
            except Exception as error:  # one failed cell (say, a diverging ablation) must not stop the grid
                message = f"{type(error).__name__}: {error}"
                cell.out_dir.mkdir(parents=True, exist_ok=True)
                write_text(cell.out_dir / FAILED, message + "\n")
                outcomes.append(CellOutcome(cell, "failed", message))
                bar.finish(cell, None, message)
            else:
                outcomes.append(CellOutcome(cell, "finished"))
                name = cell.config.eval.metric.name
                bar.finish(cell, f"{name} {results[name]:.4g}", None)
            _release_compiled_programs()
    finally:
        bar.close()
    return outcomes


def _release_compiled_programs() -> None:
    """Many runs in one process: JAX keeps every compiled program unless told (see tests/conftest.py)."""
    if "jax" in sys.modules:
        sys.modules["jax"].clear_caches()
    gc.collect()


class _GridProgress:
    """A tqdm bar over every cell's training steps on a terminal; a line per cell elsewhere."""

    def __init__(self, total: int, initial: int, cells: int, enabled: bool, metric: str):
        self.total, self.done, self.cells, self.enabled, self.metric = total, initial, cells, enabled, metric
        self.began, self.trained_here = time.perf_counter(), 0
        self.bar, self.cell_done, self.label, self.shown = None, 0, "", {}
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, desc="study")

    def start(self, cell: Cell, index: int, done: int) -> None:
        self.label, self.cell_done, self.shown = f"[{index}/{self.cells}] {cell.label}", done, {}
        if self.bar is not None:
            self.bar.set_description(self.label)
        elif self.enabled:
            resumed = f", resuming at step {done}" if done else ""
            print(f"{self.label}: training{resumed}", file=sys.stderr, flush=True)

    def on_log(self, step: int, values: dict) -> None:
        if step > self.cell_done:
            self.done += step - self.cell_done
            self.trained_here += step - self.cell_done
            self.cell_done = step
        if self.bar is not None:
            self.bar.update(self.done - self.bar.n)
            for key, shown in (("loss", "loss"), (f"eval/{self.metric}", self.metric)):
                if key in values:
                    self.shown[shown] = f"{values[key]:.4g}"
            self.bar.set_postfix(self.shown)

    def finish(self, cell: Cell, metric: str | None, error: str | None) -> None:
        if self.bar is not None:
            if error:
                self.bar.write(f"{self.label}: FAILED: {error}")
            return
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.began
        rate = self.trained_here / elapsed if elapsed > 0 else math.nan
        eta = (self.total - self.done) / rate if rate > 0 else math.nan
        outcome = f"FAILED: {error}" if error else f"done, {metric}"
        print(f"{self.label}: {outcome}; grid {self.done}/{self.total} steps, eta {eta / 60:.0f} min",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
