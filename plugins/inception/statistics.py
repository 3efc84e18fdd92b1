"""``toolkit fid-stats IMAGES --weights W --out stats.npz``: the reference statistics FID
compares samples with, the mean and covariance of the Inception ``pool_3`` features of a
folder of images (ImageNet's training images for the ImageNet 256 protocol) or of the training
images of an HDF5 data set (CIFAR-10's 50,000, as the authors' CIFAR-10 FID compares with the
whole training set: Gsunshine/py-meanflow at 1f6d72d, meanflow/training/eval_loop.py:57).

A folder's images are read as ``toolkit data encode`` reads them (RGB, ADM's center crop to
``--resolution``); a data set's are taken as stored, mapped from their value range to [-1, 1].
Both then go through the metric's own preprocessing and network, so samples and reference are
seen the same way. The file holds ``mu`` (2048,) and ``sigma`` (2048, 2048),
float64, as pytorch-fid's ``--save-stats`` writes them, plus ``count``, ``resolution`` and the
weight file's name; it is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click
import numpy as np

from toolkit.errors import UsageError


def image_statistics(images, weights, out, resolution: int = 256, batch_size: int = 50, device: str = "cpu",
                     limit: int | None = None, seed: int = 0, overwrite: bool = False,
                     progress: bool = True) -> str:
    """What ``toolkit fid-stats`` does; ``images`` is a folder or an HDF5 data set. Returns a
    one-line summary."""
    from tqdm import tqdm

    from toolkit.metrics import RunningMoments
    from toolkit.plugins.inception import FIDOptions
    from toolkit.plugins.inception.metric import FID

    out = Path(out)
    if out.exists() and not overwrite:
        raise UsageError(f"{out} already exists; choose another --out, or pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise UsageError(f"{out.parent} does not exist; create the folder first or choose another --out")
    if not Path(weights).expanduser().is_file():
        raise UsageError(f"--weights {weights}: no such file; expected a local Inception weight file, e.g. "
                         f"pytorch-fid's pt_inception-2015-12-05-6726825d.pth (the toolkit never downloads it)")
    reader = _dataset_reader if Path(images).is_file() else _folder_reader
    count, batches, described = reader(Path(images), resolution, limit, seed, batch_size)
    if count < 2:
        raise UsageError(f"{images}: {count} image(s); a covariance needs at least 2")
    metric = FID(FIDOptions(weights=str(weights), batch_size=batch_size, device=device))
    moments = RunningMoments()  # 1.28M x 2048 features would not fit in memory; their moments do
    with tqdm(total=count, desc="inception features", unit="img", disable=None if progress else True) as bar:
        for batch in batches:
            moments.update(metric.features(batch))
            bar.update(len(batch))
    mu, sigma = moments.fit()
    fd, temporary = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".npz", dir=out.parent)
    os.close(fd)
    try:
        np.savez(temporary, mu=mu, sigma=sigma, count=np.int64(count), resolution=np.int64(resolution),
                 weights=np.str_(Path(weights).name))
        os.replace(temporary, out)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return (f"{out}: Inception statistics of {count} images of {described}\n"
            f"use them with: eval: {{metric: {{name: fid, weights: {weights}, reference: {out.resolve()}}}}}")


def _subset(count: int, limit: int | None, seed: int) -> np.ndarray:
    """All indices, or a seeded random subset of ``limit`` (not the first classes only)."""
    if limit is None or limit >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng([seed, 17]).choice(count, size=limit, replace=False))


def _folder_reader(folder: Path, resolution: int, limit, seed: int, batch_size: int):
    from toolkit.plugins.hdf5.latents import load_image
    from toolkit.plugins.hdf5.sources import list_images

    files, _, _, _ = list_images(folder)
    files = [files[i] for i in _subset(len(files), limit, seed)]
    batches = (np.stack([load_image(f, resolution) for f in files[start:start + batch_size]])
               for start in range(0, len(files), batch_size))
    return len(files), batches, f"{folder} at {resolution}x{resolution}"


def _dataset_reader(path: Path, resolution: int, limit, seed: int, batch_size: int):
    """The training images (``x``) of an HDF5 data set, in [-1, 1]."""
    from toolkit.plugins.hdf5.format import inspect_file, open_file

    info = inspect_file(path)
    if len(info.shape) != 3 or info.shape[0] not in (1, 3):
        raise UsageError(f"{path}: examples of shape {info.shape}; expected images (1 or 3 channels, height, "
                         f"width). For latents, give the folder of the images they were encoded from")
    rows = _subset(info.train.count, limit, seed)

    def batches():
        with open_file(path) as handle:
            for start in range(0, len(rows), batch_size):
                yield info.to_model_range(handle[info.train.x][rows[start:start + batch_size]])

    size = "x".join(str(n) for n in info.shape[1:])
    return len(rows), batches(), f"{path} (its training split, {size} as stored)"


@click.command("fid-stats")
@click.argument("images", metavar="IMAGES", type=click.Path(exists=True))
@click.option("--weights", required=True, type=click.Path(dir_okay=False),
              help="The local Inception weight file (pytorch-fid's pt_inception-2015-12-05-6726825d.pth).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The .npz file to write.")
@click.option("--resolution", type=click.IntRange(min=1), default=256, show_default=True,
              help="Side of ADM's center crop, as `toolkit data encode` prepares a folder's images "
                   "(an HDF5 data set's images are taken as stored).")
@click.option("--batch-size", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="A torch device for the network.")
@click.option("--limit", type=click.IntRange(min=2), default=None,
              help="Use a seeded random subset of this many images [default: all].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seeds --limit's subset.")
@click.option("--overwrite", is_flag=True, help="Replace the file if it exists.")
def fid_stats(images, weights, out, resolution, batch_size, device, limit, seed, overwrite):
    """Inception statistics (mu, sigma) of IMAGES, the reference of the fid metric: a folder
    of images, or an HDF5 data set of images (toolkit data build), whose training split is used.

    Use them with eval.metric {name: fid, weights: W, reference: stats.npz}; FID then compares
    the samples with these images instead of the data set's held-out examples.
    """
    click.echo(image_statistics(images, weights, out, resolution, batch_size, device, limit, seed, overwrite))
