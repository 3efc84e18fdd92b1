"""Reading, checking and writing the HDF5 layout described in :mod:`toolkit.plugins.hdf5`.

:func:`inspect_file` opens a file, checks everything a reader relies on and returns a
:class:`FileInfo`; :func:`write_file` writes one atomically. Both name the file in every
error, say what is wrong and what was expected.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Sequence

import attrs
import h5py
import numpy as np

from toolkit.errors import ToolkitError, UsageError

FORMAT_VERSION = 1
#: Rows per chunk at most, and bytes per chunk at most: a chunk is the unit the reader
#: fetches and shuffles, so it should hold many examples but stay a few MiB.
MAX_CHUNK_ROWS = 256
MAX_CHUNK_BYTES = 16 * 2**20
#: How many labels are checked per read when validating ``y`` (bounded memory on huge files).
LABEL_SLICE = 2**20
#: Labels must lie in [0, MAX_CLASSES). The largest labelled image sets have about 2e4 classes
#: (ImageNet-21k: 21,841), and a class-conditional model holds weights per class (a million
#: classes of width 1024 are 4 GiB of float32): a label beyond this is an identifier or a
#: corrupt value, not a class index, and would make the split and the per-class counts loop
#: over that many classes.
MAX_CLASSES = 10**6
BUILT_BY = "toolkit data build"


class DataError(ToolkitError):
    """A data file that cannot be used as it is (exit code 1, like an unreadable checkpoint)."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")


@attrs.frozen
class Split:
    """One pair of arrays in a file: ``x`` (and ``y``), or ``x_test`` (and ``y_test``)."""

    x: str
    y: str | None
    count: int
    chunk_rows: int  # the reader's block: rows per HDF5 chunk (or a default when contiguous)


@attrs.frozen
class FileInfo:
    """Everything :func:`inspect_file` found in a valid file."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    value_range: tuple[float, float]
    source: str
    num_classes: int
    class_names: tuple[str, ...] | None
    scale: float
    format_version: int
    train: Split
    test: Split | None
    #: every value is known to be finite: integers, or floats the writer checked (meta ``finite``)
    finite_checked: bool = False

    @property
    def labelled(self) -> bool:
        return self.train.y is not None

    def to_model_range(self, x: np.ndarray) -> np.ndarray:
        """Stored values in float32, ``value_range`` mapped onto [-1, 1] (the models' data range)."""
        lo, hi = self.value_range
        x = x.astype(np.float32)
        x *= np.float32(2.0 / (hi - lo))
        x += np.float32(-2.0 * lo / (hi - lo) - 1.0)
        return x


@contextlib.contextmanager
def open_file(path: str | os.PathLike) -> Iterator[h5py.File]:
    """``h5py.File(path, "r")`` with the failures a user meets turned into :class:`DataError`."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "no such file; expected an HDF5 file written by `toolkit data build`")
    if path.is_dir():
        raise DataError(path, "is a folder; expected an HDF5 file written by `toolkit data build`")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise DataError(path, _open_problem(path, error)) from None
    try:
        yield handle
    finally:
        handle.close()


def _open_problem(path: Path, error: OSError) -> str:
    text = str(error)
    if not h5py.is_hdf5(path):
        return "not an HDF5 file (no HDF5 signature in its first bytes); expected a file written by " \
               "`toolkit data build`"
    if "truncated" in text or "eof" in text.lower():
        return (f"truncated HDF5 file: it has {path.stat().st_size} bytes, fewer than its header declares "
                f"(an interrupted copy or build?); rebuild or copy it again ({text})")
    return f"cannot be read as HDF5 ({text}); expected a file written by `toolkit data build`"


def inspect_file(path: str | os.PathLike) -> FileInfo:
    """Open ``path``, check the layout and the labels, and describe it."""
    with open_file(path) as handle:
        return inspect_handle(handle, path)


def inspect_handle(handle: h5py.File, path: str | os.PathLike) -> FileInfo:
    def fail(problem: str) -> DataError:
        return DataError(path, problem)

    x = _dataset(handle, "x", path, required=True)
    if x.ndim < 2:
        raise fail(f"'x' has shape {x.shape}; expected (N, *S): one row per example, with a "
                   f"non-empty per-example shape S")
    if x.dtype.kind not in "uif":
        raise fail(f"'x' has dtype {x.dtype}; expected uint8 (images) or float32 (arrays, latents)")
    if x.shape[0] == 0:
        raise fail(f"holds no examples ('x' has shape {x.shape}); expected at least one")

    meta = handle.get("meta")
    if not isinstance(meta, h5py.Group):
        raise fail("no group 'meta'; expected 'meta' with attributes shape, dtype, value_range, source, "
                   "num_classes, format_version")
    version = _int_attr(meta, "format_version", path)
    if version != FORMAT_VERSION:
        newer = " (written by a newer toolkit; upgrade it)" if version > FORMAT_VERSION else ""
        raise fail(f"meta format_version is {version}{newer}; expected {FORMAT_VERSION}")
    shape = tuple(int(n) for n in np.atleast_1d(_attr(meta, "shape", path)))
    if shape != x.shape[1:]:
        raise fail(f"meta shape {shape} disagrees with 'x' of shape {x.shape}; expected meta shape = "
                   f"x.shape[1:] = {x.shape[1:]}")
    dtype = str(_attr(meta, "dtype", path))
    if dtype != str(x.dtype):
        raise fail(f"meta dtype {dtype!r} disagrees with 'x' of dtype {x.dtype}; expected them equal")
    value_range = tuple(float(v) for v in np.ravel(_attr(meta, "value_range", path)))
    if len(value_range) != 2 or not all(map(math.isfinite, value_range)) or value_range[0] >= value_range[1]:
        raise fail(f"meta value_range is {list(value_range)}; expected [lo, hi] with lo < hi, the range of "
                   f"the stored values (e.g. [0, 255] for uint8 images)")
    num_classes = _int_attr(meta, "num_classes", path)
    if not 0 <= num_classes <= MAX_CLASSES:
        raise fail(f"meta num_classes is {num_classes}; expected 0 (unlabelled) or the number of classes, "
                   f"at most {MAX_CLASSES}")
    class_names = None
    if "class_names" in meta.attrs:
        class_names = _class_names(meta.attrs["class_names"], num_classes, path)
    scale = float(meta.attrs.get("scale", 1.0))
    if not math.isfinite(scale) or scale == 0:
        raise fail(f"meta scale is {scale}; expected a finite, non-zero number (1.0 unless latents were scaled)")
    source = str(meta.attrs.get("source", ""))
    finite_checked = x.dtype.kind != "f" or bool(meta.attrs.get("finite", False))

    train = _split(handle, "x", "y", num_classes, path, expected_shape=None)
    test = None
    if "x_test" in handle:
        test = _split(handle, "x_test", "y_test", num_classes, path, expected_shape=x.shape[1:])
        if test.count == 0:
            test = None  # an empty test set is as good as none: the reader holds out from x
        elif (test.y is None) != (train.y is None):
            raise fail(f"'y' is {'present' if train.y else 'absent'} but 'y_test' is "
                       f"{'present' if test.y else 'absent'}; expected both or neither")
        elif handle["x_test"].dtype != x.dtype:
            raise fail(f"'x_test' has dtype {handle['x_test'].dtype}, 'x' {x.dtype}; expected the same")
    elif "y_test" in handle:
        raise fail("has 'y_test' but no 'x_test'; expected both or neither")
    return FileInfo(str(path), shape, dtype, (value_range[0], value_range[1]), source, num_classes,
                    class_names, scale, version, train, test, finite_checked)


def _dataset(handle: h5py.File, name: str, path, required: bool) -> h5py.Dataset | None:
    node = handle.get(name)
    if node is None:
        if required:
            found = ", ".join(sorted(handle.keys())) or "nothing"
            raise DataError(path, f"no dataset {name!r} (found: {found}); expected the examples as {name!r} "
                                  f"of shape (N, *S), as written by `toolkit data build`")
        return None
    if not isinstance(node, h5py.Dataset):
        raise DataError(path, f"{name!r} is a {type(node).__name__}; expected an array (HDF5 dataset)")
    return node


def _split(handle: h5py.File, x_name: str, y_name: str, num_classes: int, path,
           expected_shape: tuple[int, ...] | None) -> Split:
    x = _dataset(handle, x_name, path, required=True)
    if expected_shape is not None and x.shape[1:] != expected_shape:
        raise DataError(path, f"{x_name!r} has shape {x.shape}; expected (M, *{expected_shape}) like 'x'")
    y = _dataset(handle, y_name, path, required=False)
    if y is None:
        if num_classes > 0:
            raise DataError(path, f"meta num_classes is {num_classes} but there are no labels {y_name!r}; "
                                  f"expected {y_name!r} of shape ({x.shape[0]},), or num_classes 0")
    else:
        if y.shape != (x.shape[0],):
            raise DataError(path, f"{y_name!r} has shape {y.shape} but {x_name!r} has {x.shape[0]} examples; "
                                  f"expected one label per example: shape ({x.shape[0]},)")
        if y.dtype.kind not in "iu":
            raise DataError(path, f"{y_name!r} has dtype {y.dtype}; expected integer class labels (int64)")
        if num_classes == 0:
            raise DataError(path, f"has labels {y_name!r} but meta num_classes is 0; expected num_classes "
                                  f"> every label")
        for start in range(0, y.shape[0], LABEL_SLICE):
            labels = y[start:start + LABEL_SLICE]
            bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
            if bad.size:
                first = start + int(bad[0])
                raise DataError(path, f"{y_name!r}[{first}] is {int(labels[bad[0]])}, outside [0, {num_classes}) "
                                      f"(meta num_classes = {num_classes}); expected labels in [0, num_classes)")
    rows = x.chunks[0] if x.chunks else min(x.shape[0], MAX_CHUNK_ROWS)
    return Split(x_name, None if y is None else y_name, int(x.shape[0]), max(1, int(rows)))


def _attr(meta: h5py.Group, name: str, path):
    if name not in meta.attrs:
        raise DataError(path, f"meta has no attribute {name!r}; expected shape, dtype, value_range, source, "
                              f"num_classes and format_version")
    return meta.attrs[name]


def _int_attr(meta: h5py.Group, name: str, path) -> int:
    value = np.asarray(_attr(meta, name, path))
    if value.shape != () or value.dtype.kind not in "iu":
        raise DataError(path, f"meta {name} is {value.tolist()!r}; expected an integer")
    return int(value)


def _class_names(raw, num_classes: int, path) -> tuple[str, ...]:
    try:
        names = json.loads(raw)
    except (TypeError, ValueError):
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(names) != num_classes:
        raise DataError(path, f"meta class_names is {raw!r}; expected a JSON list of {num_classes} strings")
    return tuple(names)


def first_non_finite(x, rows: int = MAX_CHUNK_ROWS) -> int | None:
    """Index of the first example of ``x`` (an array or an HDF5 dataset, read ``rows`` at a time)
    that holds NaN or an infinity; None when there is none."""
    if x.dtype.kind != "f":
        return None
    for start in range(0, x.shape[0], rows):
        block = np.asarray(x[start:start + rows])
        bad = np.flatnonzero(~np.isfinite(block.reshape(len(block), -1)).all(axis=1))
        if bad.size:
            return start + int(bad[0])
    return None


def non_finite_error(where: str | os.PathLike, example: str) -> DataError:
    """The error for NaN or an infinity in ``example`` of ``where``: it would make training diverge."""
    return DataError(where, f"{example} holds NaN or infinite values; expected finite numbers (training on them "
                            f"diverges)")


def check_finite(handle: h5py.File, info: FileInfo) -> None:
    """Read every example of a file whose values were not checked when written (one chunk at a
    time), and raise :func:`non_finite_error` for the first that is not finite."""
    if info.finite_checked:
        return
    for split in (info.train, info.test):
        if split is not None:
            bad = first_non_finite(handle[split.x], split.chunk_rows)
            if bad is not None:
                raise non_finite_error(info.path, f"{split.x!r}[{bad}]")


# -- writing -----------------------------------------------------------------------------------


def chunk_rows(count: int, example_shape: Sequence[int], dtype: np.dtype) -> int:
    """Rows per chunk: up to 256 whole examples, fewer when an example is large."""
    example_bytes = max(1, int(np.prod(example_shape)) * np.dtype(dtype).itemsize)
    return max(1, min(count, MAX_CHUNK_ROWS, MAX_CHUNK_BYTES // example_bytes))


@attrs.frozen
class Meta:
    """The ``meta`` attributes of a file to write."""

    shape: tuple[int, ...]
    dtype: str
    value_range: tuple[float, float]
    source: str
    num_classes: int = 0
    class_names: tuple[str, ...] | None = None
    scale: float = 1.0


def write_file(out: Path, meta: Meta, read: Callable[[np.ndarray], np.ndarray], labels: np.ndarray | None,
               train: np.ndarray, test: np.ndarray, overwrite: bool = False,
               progress: Callable[[int], None] | None = None) -> None:
    """Write examples ``read(train)`` as ``x`` and ``read(test)`` as ``x_test`` (with their labels).

    ``read`` maps source indices to examples and is called one chunk at a time, so a source
    larger than memory streams through. The file appears at ``out`` only when complete:
    it is written beside it under a temporary name, then renamed.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise UsageError(f"{out} already exists; choose another --out, or pass --overwrite to replace it")
    if out.is_dir():
        raise UsageError(f"{out} is a folder; expected the path of the .h5 file to write")
    if not out.parent.is_dir():
        raise UsageError(f"{out.parent} does not exist; create the folder first or choose another --out")
    fd, temporary = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    disk = _GuardedFile(fd)
    try:
        with disk, h5py.File(disk, "w") as handle:
            for x_name, y_name, indices in (("x", "y", train), ("x_test", "y_test", test)):
                if x_name == "x_test" and len(indices) == 0:
                    continue  # no test set: the reader holds out from x instead
                _write_split(handle, x_name, y_name, meta, read, labels, indices, progress, disk)
            group = handle.create_group("meta")
            group.attrs["format_version"] = np.int64(FORMAT_VERSION)
            group.attrs["shape"] = np.asarray(meta.shape, dtype=np.int64)
            group.attrs["dtype"] = meta.dtype
            group.attrs["value_range"] = np.asarray(meta.value_range, dtype=np.float64)
            group.attrs["source"] = meta.source
            group.attrs["num_classes"] = np.int64(meta.num_classes)
            if meta.class_names is not None:
                group.attrs["class_names"] = json.dumps(list(meta.class_names))
            group.attrs["scale"] = float(meta.scale)
            group.attrs["finite"] = np.int64(1)  # _write_split checked every value: readers need not
            group.attrs["built_by"] = BUILT_BY
        disk.raise_error()  # a write that failed while HDF5 closed the file
        os.replace(temporary, out)  # atomic on one file system: readers see the old file or the new
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(error, OSError):
            needed = (len(train) + len(test)) * int(np.prod(meta.shape)) * np.dtype(meta.dtype).itemsize
            full = f"; it needs about {needed / 2**20:.1f} MiB" if error.errno in (errno.ENOSPC, errno.EDQUOT) else ""
            raise ToolkitError(f"{out}: cannot write ({error.strerror or error}){full}") from error
        raise


class _GuardedFile:
    """The temporary file as HDF5 writes it (h5py's ``fileobj`` driver), so that a failed write
    never reaches HDF5: HDF5 cannot close a file one of whose writes failed, and the process
    then crashes at exit (h5py/h5py#914, #2160; a full disk gave exit 139). The first error is
    kept; later writes are dropped and reported done, so HDF5 closes cleanly, and the writer
    gives up at its next :meth:`raise_error`."""

    def __init__(self, fd: int):
        self.fd, self.position, self.size = fd, 0, 0
        self.error: OSError | None = None

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.position, os.SEEK_END: self.size}[whence]
        self.position = base + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[:] = data
        return len(view)

    def read(self, size: int) -> bytes:
        data = b""
        if self.error is None:
            try:
                data = os.pread(self.fd, size, self.position)
            except OSError as error:
                self.error = error
        self.position += size
        return data.ljust(size, b"\0")  # as HDF5's own driver: past the end (or a dropped write), zeros

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if self.error is None:
            try:
                done = 0
                while done < len(view):  # a write may stop short as the disk fills: go on until it fails
                    done += os.pwrite(self.fd, view[done:], self.position + done)
            except OSError as error:
                self.error = error
        self.position += len(view)
        self.size = max(self.size, self.position)
        return len(view)

    def truncate(self, size: int) -> int:
        if self.error is None:
            try:
                os.ftruncate(self.fd, size)
            except OSError as error:
                self.error = error
        self.size = size
        return size

    def flush(self) -> None:
        """Nothing to do: every write is a system call of its own (leaving commits them)."""

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def __enter__(self) -> "_GuardedFile":
        return self

    def __exit__(self, *exc) -> None:
        """Commit the writes (some file systems report a full disk only then: NFS, quotas) and close."""
        try:
            if self.error is None:
                os.fsync(self.fd)
        except OSError as error:
            self.error = error
        finally:
            os.close(self.fd)


def _write_split(handle: h5py.File, x_name: str, y_name: str, meta: Meta,
                 read: Callable[[np.ndarray], np.ndarray], labels: np.ndarray | None, indices: np.ndarray,
                 progress: Callable[[int], None] | None, disk: _GuardedFile) -> None:
    count = len(indices)
    rows = chunk_rows(count, meta.shape, np.dtype(meta.dtype))
    x = handle.create_dataset(x_name, shape=(count, *meta.shape), dtype=meta.dtype, chunks=(rows, *meta.shape))
    for start in range(0, count, rows):
        block = read(indices[start:start + rows])
        bad = first_non_finite(block)
        if bad is not None:
            raise non_finite_error(meta.source, f"example {int(indices[start + bad])}")
        x[start:start + len(block)] = block
        disk.raise_error()  # a full disk: give up now, not after reading the rest of the source
        if progress is not None:
            progress(len(block))
    if labels is not None:
        handle.create_dataset(y_name, data=labels[indices].astype(np.int64), chunks=(rows,))
