"""``toolkit fid-stats IMAGE_FOLDER --weights W --out stats.npz``: the reference statistics FID
compares samples with, the mean and covariance of the Inception ``pool_3`` features of a
folder of images (ImageNet's training images for the ImageNet 256 protocol).

Images are read as ``toolkit data encode`` reads them (RGB, ADM's center crop to
``--resolution``), then go through the metric's own preprocessing and network, so samples and
reference are seen the same way. The file holds ``mu`` (2048,) and ``sigma`` (2048, 2048),
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


def folder_statistics(folder, weights, out, resolution: int = 256, batch_size: int = 50, device: str = "cpu",
                      limit: int | None = None, seed: int = 0, overwrite: bool = False,
                      progress: bool = True) -> str:
    """What ``toolkit fid-stats`` does; returns a one-line summary."""
    from tqdm import tqdm

    from toolkit.plugins.hdf5.latents import load_image
    from toolkit.plugins.hdf5.sources import list_images
    from toolkit.plugins.inception import FIDOptions
    from toolkit.metrics import RunningMoments
    from toolkit.plugins.inception.metric import FID

    out = Path(out)
    if out.exists() and not overwrite:
        raise UsageError(f"{out} already exists; choose another --out, or pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise UsageError(f"{out.parent} does not exist; create the folder first or choose another --out")
    if not Path(weights).expanduser().is_file():
        raise UsageError(f"--weights {weights}: no such file; expected a local Inception weight file, e.g. "
                         f"pytorch-fid's pt_inception-2015-12-05-6726825d.pth (the toolkit never downloads it)")
    files, _, _, _ = list_images(Path(folder))
    if limit is not None and limit < len(files):  # a seeded subset, not the first classes only
        keep = np.sort(np.random.default_rng([seed, 17]).choice(len(files), size=limit, replace=False))
        files = [files[i] for i in keep]
    if len(files) < 2:
        raise UsageError(f"{folder}: {len(files)} image(s); a covariance needs at least 2")
    metric = FID(FIDOptions(weights=str(weights), batch_size=batch_size, device=device))
    moments = RunningMoments()  # 1.28M x 2048 features would not fit in memory; their moments do
    with tqdm(total=len(files), desc="inception features", unit="img", disable=None if progress else True) as bar:
        for start in range(0, len(files), batch_size):
            batch = files[start:start + batch_size]
            moments.update(metric.features(np.stack([load_image(f, resolution) for f in batch])))
            bar.update(len(batch))
    mu, sigma = moments.fit()
    fd, temporary = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".npz", dir=out.parent)
    os.close(fd)
    try:
        np.savez(temporary, mu=mu, sigma=sigma, count=np.int64(len(files)), resolution=np.int64(resolution),
                 weights=np.str_(Path(weights).name))
        os.replace(temporary, out)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return (f"{out}: Inception statistics of {len(files)} images of {folder} at {resolution}x{resolution}\n"
            f"use them with: eval: {{metric: {{name: fid, weights: {weights}, reference: {out.resolve()}}}}}")


@click.command("fid-stats")
@click.argument("folder", metavar="IMAGE_FOLDER", type=click.Path(file_okay=False))
@click.option("--weights", required=True, type=click.Path(dir_okay=False),
              help="The local Inception weight file (pytorch-fid's pt_inception-2015-12-05-6726825d.pth).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The .npz file to write.")
@click.option("--resolution", type=click.IntRange(min=1), default=256, show_default=True,
              help="Side of ADM's center crop, as `toolkit data encode` prepares images.")
@click.option("--batch-size", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="A torch device for the network.")
@click.option("--limit", type=click.IntRange(min=2), default=None,
              help="Use a seeded random subset of this many images [default: all].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seeds --limit's subset.")
@click.option("--overwrite", is_flag=True, help="Replace the file if it exists.")
def fid_stats(folder, weights, out, resolution, batch_size, device, limit, seed, overwrite):
    """Inception statistics (mu, sigma) of IMAGE_FOLDER, the reference of the fid metric.

    Use them with eval.metric {name: fid, weights: W, reference: stats.npz}; FID then compares
    the samples with these images instead of the data set's held-out examples.
    """
    click.echo(folder_statistics(folder, weights, out, resolution, batch_size, device, limit, seed, overwrite))
