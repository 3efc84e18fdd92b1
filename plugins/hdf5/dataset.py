"""The ``hdf5`` dataset: streams a file in shuffled, chunk-sized blocks.

The training stream is one endless sequence of example indices, epoch after epoch; batch
``i`` is items ``[i B, (i + 1) B)`` of it, so it depends only on ``(seed, B, i)`` and a batch
may straddle two epochs. Epoch ``e`` is built from the training rows cut into *blocks*
(one HDF5 chunk each, the unit the file is read in):

1. the blocks are permuted with ``rng(seed, e)``;
2. consecutive runs of :data:`SHUFFLE_BLOCKS` permuted blocks form *windows*, and the
   examples of each window are permuted with ``rng(seed, e, window)``.

This is the block shuffle of large-scale loaders (shuffled shards plus a shuffle buffer),
made random-access: any position is found without replaying the stream, so a resumed run
continues exactly. Every epoch visits every training example once. Mixing is local, so
``toolkit data build`` writes examples in a seeded random order; a file sorted by class
would give batches of a few classes.

Memory holds at most ``cache_chunks`` blocks (least recently used first out). With the
default 8 (two windows), each block is read once per epoch; fewer still works, re-reading.
The h5py handle is opened on first use in each process and is never pickled.
"""

from __future__ import annotations

import collections
import os
from typing import Iterator

import h5py
import numpy as np

from toolkit.errors import UsageError
from toolkit.interfaces import Batch, DataSpec
from toolkit.plugins.hdf5 import HDF5Options
from toolkit.plugins.hdf5.format import DataError, FileInfo, Split, first_non_finite, inspect_file, non_finite_error
from toolkit.plugins.hdf5.latents import check_normalize, dataset_decoder

#: Blocks per shuffle window: more mixes better, and needs more blocks in memory at once.
SHUFFLE_BLOCKS = 4
#: Without a held-out set in the file: hold out this fraction of ``x``, at most this many.
AUTO_HOLDOUT_FRACTION = 0.1
AUTO_HOLDOUT_MAX = 2000
#: Epoch plans and window permutations kept, so consecutive batches do not redraw them.
PLANS_KEPT = 4


class HDF5Dataset:
    """A file written by ``toolkit data build``, streamed (see the module docstring)."""

    def __init__(self, options: HDF5Options):
        self.options = options
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._cache: collections.OrderedDict[int, tuple[np.ndarray, np.ndarray | None]] = collections.OrderedDict()
        self._plans: collections.OrderedDict = collections.OrderedDict()
        self.reads = 0  # blocks read from the file, for tests and curiosity
        if not os.path.exists(options.path):
            if options.source:
                _build_missing(options)
            elif options.prepare:
                commands = "\n    ".join(options.prepare.strip().splitlines())
                raise UsageError(f"data.path: {options.path} does not exist. Prepare it with:\n    {commands}\n"
                                 f"or exercise the run without it: toolkit run CONFIG --smoke")
        self.info: FileInfo = inspect_file(options.path)  # opens, checks and closes: no handle kept
        check_normalize(options.path, options.normalize)  # VAE latents are trained on as stored
        decoder = dataset_decoder(options.path)  # latents: pictures and image metrics decode them
        if decoder is not None:
            self.decode = decoder
        info = self.info
        # num_classes 0 on a labelled file: an unconditional run on it (CIFAR-10), the labels unread
        self.labels_used = info.num_classes > 0 and options.num_classes != 0
        self.spec = DataSpec(info.shape, info.num_classes if self.labels_used else 0)
        for key, expected, found in (("shape", options.shape, info.shape),
                                     ("num_classes", options.num_classes, self.spec.num_classes)):
            if expected is not None and tuple(np.atleast_1d(expected)) != tuple(np.atleast_1d(found)):
                raise DataError(options.path, f"holds {key} {found}, but the config's data.{key} expects {expected}")
        if options.horizontal_flip and len(info.shape) != 3:
            raise DataError(options.path, f"holds examples of shape {info.shape}, but the config's "
                                          f"data.horizontal_flip expects images (channels, height, width)")
        self.num_train, self.held_out = self._split_training(info, options.holdout)
        self.block_rows = info.train.chunk_rows
        self.num_blocks = -(-self.num_train // self.block_rows)

    def _split_training(self, info: FileInfo, holdout: int) -> tuple[int, tuple[Split, int, int]]:
        """``(training rows, (split, first row, count) of the held-out examples)``."""
        n = info.train.count
        if info.test is not None:
            if holdout:
                raise DataError(info.path, f"has a held-out set 'x_test' ({info.test.count} examples), so "
                                           f"data.holdout={holdout} does not apply; expected data.holdout 0 "
                                           f"(use x_test), or a file without x_test")
            return n, (info.test, 0, info.test.count)
        if not holdout:
            holdout = min(max(1, int(n * AUTO_HOLDOUT_FRACTION)), AUTO_HOLDOUT_MAX)
        if holdout >= n:
            raise DataError(info.path, f"has {n} examples and no 'x_test', so holding out {holdout} leaves none "
                                       f"to train on; expected data.holdout < {n} (or build with --test-fraction)")
        return n - holdout, (info.train, n - holdout, holdout)

    # -- the file handle: one per process, opened on first use ------------------------------------

    def _handle(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            # After a fork the parent's handle is not ours to use or close: drop it and open anew.
            self._file, self._cache = None, collections.OrderedDict()
            try:
                handle = h5py.File(self.options.path, "r")
            except OSError as error:
                raise DataError(self.options.path, f"cannot be opened any more ({error}); was it moved or "
                                                   f"rewritten during the run?") from None
            if handle["x"].shape[0] != self.info.train.count:
                handle.close()
                raise DataError(self.options.path, f"changed since it was checked: 'x' now has "
                                                   f"{handle['x'].shape[0]} examples, expected "
                                                   f"{self.info.train.count}")
            self._file, self._pid = handle, os.getpid()
        return self._file

    def close(self) -> None:
        """Close the file and drop cached blocks; the next read opens it again."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file, self._pid = None, None
        self._cache.clear()

    def __enter__(self) -> "HDF5Dataset":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: h5py may already be gone
            pass

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)  # handles cannot cross processes; each reopens lazily
        state.update(_file=None, _pid=None, _cache=collections.OrderedDict())
        return state

    # -- reading --------------------------------------------------------------------------------

    def _read(self, split: Split, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
        handle = self._handle()
        try:
            x = handle[split.x][start:stop]
            y = handle[split.y][start:stop].astype(np.int64) if split.y else None
        except OSError as error:
            raise DataError(self.options.path, f"cannot read rows {start}:{stop} of {split.x!r} ({error}); "
                                               f"the file may be damaged") from None
        # A file whose writer did not check its values is checked here, a block as it is read: no
        # read of its own (a whole-file scan at each start would cost minutes on large latents).
        bad = None if self.info.finite_checked else first_non_finite(x)
        if bad is not None:
            raise non_finite_error(self.options.path, f"{split.x!r}[{start + bad}]")
        self.reads += 1
        return x, y

    def _block(self, block: int) -> tuple[np.ndarray, np.ndarray | None]:
        if block in self._cache:
            self._cache.move_to_end(block)
            return self._cache[block]
        start = block * self.block_rows
        data = self._read(self.info.train, start, min(start + self.block_rows, self.num_train))
        self._cache[block] = data
        while len(self._cache) > self.options.cache_chunks:
            self._cache.popitem(last=False)
        return data

    def _convert(self, x: np.ndarray) -> np.ndarray:
        return self.info.to_model_range(x) if self.options.normalize else x.astype(np.float32)

    # -- the order ------------------------------------------------------------------------------

    def _remember(self, key, make):
        if key not in self._plans:
            self._plans[key] = make()
            while len(self._plans) > 2 * PLANS_KEPT:
                self._plans.popitem(last=False)
        return self._plans[key]

    def _epoch_plan(self, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """``(blocks in visiting order, first stream position of each window + the end)``."""
        def make():
            order = np.random.default_rng([seed, 1, epoch]).permutation(self.num_blocks)
            sizes = np.minimum(self.block_rows, self.num_train - order * self.block_rows)
            ends = np.cumsum(sizes)
            window_ends = ends[SHUFFLE_BLOCKS - 1::SHUFFLE_BLOCKS]
            if window_ends.size == 0 or window_ends[-1] != self.num_train:
                window_ends = np.append(window_ends, self.num_train)
            return order, np.concatenate([[0], window_ends])
        return self._remember(("epoch", seed, epoch), make)

    def _window(self, seed: int, epoch: int, window: int) -> np.ndarray:
        """The training rows of one window, in the order the stream visits them."""
        def make():
            order, starts = self._epoch_plan(seed, epoch)
            blocks = order[window * SHUFFLE_BLOCKS:(window + 1) * SHUFFLE_BLOCKS]
            rows = np.concatenate([np.arange(b * self.block_rows, min((b + 1) * self.block_rows, self.num_train))
                                   for b in blocks])
            assert rows.size == starts[window + 1] - starts[window]
            return rows[np.random.default_rng([seed, 2, epoch, window]).permutation(rows.size)]
        return self._remember(("window", seed, epoch, window), make)

    def stream_rows(self, seed: int, start: int, stop: int) -> np.ndarray:
        """The training rows at positions ``[start, stop)`` of the stream for ``seed``."""
        rows = np.empty(stop - start, dtype=np.int64)
        position = start
        while position < stop:
            epoch, offset = divmod(position, self.num_train)
            _, starts = self._epoch_plan(seed, epoch)
            window = int(np.searchsorted(starts, offset, side="right")) - 1
            take = min(stop - position, int(starts[window + 1]) - offset)
            first = offset - int(starts[window])
            rows[position - start:position - start + take] = self._window(seed, epoch, window)[first:first + take]
            position += take
        return rows

    def _gather(self, rows: np.ndarray) -> Batch:
        """Training examples at ``rows``, block by block through the cache."""
        x = np.empty((rows.size, *self.spec.shape), dtype=np.float32)
        y = np.empty(rows.size, dtype=np.int64) if self.labels_used else None
        blocks = rows // self.block_rows
        for block in dict.fromkeys(blocks.tolist()):  # in first-use order, so the LRU follows the stream
            where = np.flatnonzero(blocks == block)
            block_x, block_y = self._block(block)
            local = rows[where] - block * self.block_rows
            x[where] = self._convert(block_x[local])
            if y is not None:
                y[where] = block_y[local]
        return Batch(x, y)

    def batches(self, batch_size: int, seed: int, start: int = 0) -> Iterator[Batch]:
        step = start
        while True:
            batch = self._gather(self.stream_rows(seed, step * batch_size, (step + 1) * batch_size))
            if self.options.horizontal_flip:
                flip = np.random.default_rng([seed, 8, step]).random(batch_size) < 0.5
                batch.x[flip] = batch.x[flip][..., ::-1]
            yield batch
            step += 1

    def reference(self, n: int, seed: int) -> Batch:
        """``n`` held-out examples: a seeded sample without replacement while ``n`` allows, then
        cycling through further seeded permutations (a small held-out set repeats evenly)."""
        split, first, count = self.held_out  # rows [first, first + count) of split
        rng = np.random.default_rng([seed, 3])
        picks = first + np.concatenate([rng.permutation(count) for _ in range(-(-n // count))] or
                                       [np.zeros(0, dtype=np.int64)])[:n]
        x = np.empty((n, *self.spec.shape), dtype=np.float32)
        y = np.empty(n, dtype=np.int64) if split.y and self.labels_used else None
        rows = split.chunk_rows
        chunks = picks // rows
        for chunk in np.unique(chunks):  # one read per chunk touched, never the whole array
            where = np.flatnonzero(chunks == chunk)
            lo = int(chunk) * rows
            block_x, block_y = self._read(split, lo, min(lo + rows, first + count))
            x[where] = self._convert(block_x[picks[where] - lo])
            if y is not None:
                y[where] = block_y[picks[where] - lo]
        return Batch(x, y)


def _build_missing(options: HDF5Options) -> None:
    import sys
    from pathlib import Path

    from toolkit.plugins.hdf5.commands import build_file

    out = Path(options.path)
    print(f"{out} does not exist: building it from data.source={options.source}", file=sys.stderr, flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        print(build_file(options.source, out), file=sys.stderr, flush=True)
    except UsageError:
        if not out.exists():  # another process (a torchrun rank) built it first: fine
            raise
