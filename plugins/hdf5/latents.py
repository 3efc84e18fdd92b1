"""Latent data sets: ``toolkit data encode`` and the decoding step of ``toolkit sample``.

``toolkit data encode IMAGE_FOLDER --vae PATH --out latents.h5`` turns a folder of images (one
sub-folder per class, e.g. ImageNet's ``train/n01440764/...``) into an HDF5 data set of VAE
latents (the format of :mod:`toolkit.plugins.hdf5`), the first step of the latent recipe of
DiT and MeanFlow (ImageNet 256 -> SD-VAE latents of shape 4 x 32 x 32):

1. **Preprocessing** (:func:`center_crop`), the ADM center crop that DiT, SiT, MeanFlow and iMF
   use for ImageNet (guided-diffusion ``image_datasets.py``, copied as ``center_crop_arr`` into
   facebookresearch/DiT ``train.py`` and the iMF/MeanFlow JAX ``utils/input_pipeline.py``):
   halve the image with a box filter while its short side is at least twice the target, resize
   bicubically so the short side equals the target, then cut the central square. Pixels map to
   [-1, 1] (``x / 127.5 - 1``, as their ``Normalize(0.5, 0.5)``).
2. **Encoding** with a Stable-Diffusion-style VAE (diffusers ``AutoencoderKL``) read from a
   local folder (``from_pretrained(PATH, local_files_only=True)``: nothing is downloaded). The
   latent is ``scale * z`` with ``scale`` the VAE's ``scaling_factor`` (0.18215 for SD-VAE)
   unless ``--scale`` says otherwise, and ``z`` is a **sample** of the encoder's diagonal
   Gaussian posterior by default (``--posterior sample``): DiT trains on
   ``vae.encode(x).latent_dist.sample().mul_(0.18215)``, and the MeanFlow/iMF JAX code caches
   the posterior's mean and std and draws a fresh sample for every batch
   (``LatentManager.cached_encode``). A file holds one array, so it stores one draw per image
   (seeded per image, so the result does not depend on ``--batch-size``); ``--posterior mean``
   stores the mean instead (deterministic; the common choice for reconstruction). What the
   recipes do beyond that, a new posterior draw and a random horizontal flip each epoch, is
   not reproduced: the file is static.
3. **Storing**: ``x`` float32 ``(N, C, H/f, W/f)`` (``f`` the VAE's downsampling, 8 for SD-VAE),
   ``y`` from the class folders, ``meta.class_names`` the folder names in label order (the
   class index), ``meta.scale`` the factor, ``meta.value_range`` the actual min/max of the
   stored latents, ``meta.source`` the folder, and the optional attributes ``meta.vae`` (the
   VAE folder, absolute), ``meta.vae_posterior`` (``sample`` or ``mean``) and
   ``meta.resolution`` (the image side). The file is written under a temporary name and
   renamed when complete.

Latents are trained on as stored: ``data: {name: hdf5, path: latents.h5, normalize: false}``
(the command prints this snippet). With ``normalize: true`` the dataset would stretch
``value_range`` onto [-1, 1], a data-dependent rescaling that the decoder does not undo, so
the dataset refuses it for a file that records a VAE (:func:`check_normalize`).

``toolkit sample`` decodes (:func:`decode_samples`) when the checkpoint's data file records a
VAE, or when ``--vae PATH`` is given: ``vae.decode(latents / scale)`` clipped to [-1, 1]
(:class:`LatentDecoder`). The dataset of such a file has a ``decode`` member
(:func:`dataset_decoder`), with which runs draw their pictures and feed image metrics
(``fid``): see ``toolkit.evaluation``.

``diffusers`` is the optional extra ``vae``: ``pip install 'meanflow-toolkit[vae]'``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import click
import numpy as np

from toolkit.errors import ToolkitError, UsageError

EXTRA = "pip install 'meanflow-toolkit[vae]'"
POSTERIORS = ("sample", "mean")
#: ``meta`` attributes this module adds (optional in format version 1).
VAE_ATTR, POSTERIOR_ATTR, RESOLUTION_ATTR = "vae", "vae_posterior", "resolution"


# -- the VAE -----------------------------------------------------------------------------------


def _diffusers():
    try:
        import diffusers
    except ImportError:
        raise UsageError(f"a VAE needs diffusers (and torch), which is not installed: {EXTRA}") from None
    return diffusers


def load_vae(path: str | os.PathLike, what: str = "--vae", device: str = "cpu"):
    """A diffusers ``AutoencoderKL`` from the local folder ``path`` (``config.json`` and weights,
    as ``save_pretrained`` writes them), in eval mode on ``device``. Never downloads. ``what``
    names where the path came from in errors."""
    path = Path(path)
    expected = ("expected a folder holding a diffusers AutoencoderKL (config.json and "
                "diffusion_pytorch_model.safetensors, as AutoencoderKL.save_pretrained writes)")
    if not path.exists():
        raise UsageError(f"{what} {path}: no such folder; {expected}")
    if not path.is_dir():
        raise UsageError(f"{what} {path}: not a folder; {expected}")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UsageError(f"{what} {path}: not a diffusers VAE folder (no config.json); {expected}")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as error:
        raise UsageError(f"{what} {path}: config.json is not readable JSON ({error}); {expected}") from None
    kind = config.get("_class_name") if isinstance(config, dict) else None
    if kind != "AutoencoderKL":
        raise UsageError(f"{what} {path}: config.json describes {kind or 'no diffusers model'!r}, not an "
                         f"AutoencoderKL; {expected}")
    diffusers = _diffusers()
    try:
        vae = diffusers.AutoencoderKL.from_pretrained(path, local_files_only=True, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"{what} {path}: cannot load the AutoencoderKL ({first}); {expected}") from None
    try:
        return vae.eval().to(device)
    except (RuntimeError, ValueError) as error:  # an unknown or absent device
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"--device {device}: cannot move the VAE there ({first}); expected a torch device "
                         f"this machine has, e.g. cpu or cuda") from None


def downsampling(vae) -> int:
    """How many pixels one latent position covers per side (8 for SD-VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def default_scale(vae) -> float:
    return float(getattr(vae.config, "scaling_factor", None) or 1.0)


# -- preprocessing -----------------------------------------------------------------------------


def center_crop(image, size: int):
    """ADM's center crop (guided-diffusion ``center_crop_arr``): box-halve while the short side
    is >= 2 * size, bicubic resize so the short side is ``size``, keep the central square.
    Takes and returns a Pillow image."""
    from PIL import Image

    while min(image.size) >= 2 * size:
        image = image.resize(tuple(n // 2 for n in image.size), resample=Image.BOX)
    factor = size / min(image.size)
    image = image.resize(tuple(round(n * factor) for n in image.size), resample=Image.BICUBIC)
    width, height = image.size
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


def load_image(path: Path, size: int) -> np.ndarray:
    """``path`` as RGB, center-cropped to ``size``: float32 ``(3, size, size)`` in [-1, 1]."""
    from PIL import Image

    from toolkit.plugins.hdf5.format import DataError

    try:
        with Image.open(path) as image:
            pixels = np.asarray(center_crop(image.convert("RGB"), size), dtype=np.float32)
    except Exception as error:  # Pillow raises several kinds for a damaged file
        raise DataError(path, f"not a readable image ({type(error).__name__}: {error})") from None
    return pixels.transpose(2, 0, 1) / np.float32(127.5) - np.float32(1.0)


# -- encoding ----------------------------------------------------------------------------------


def posterior_noise(seed: int, index: int, shape: tuple[int, ...]) -> np.ndarray:
    """The standard normal draw of image ``index`` (its position in the folder listing)."""
    return np.random.default_rng([seed, 11, index]).standard_normal(shape).astype(np.float32)


def encode_images(vae, pixels: np.ndarray, posterior: str, scale: float,
                  noise: np.ndarray | None = None) -> np.ndarray:
    """``scale * z`` for images ``pixels`` (float32 ``(B, 3, H, W)`` in [-1, 1]): ``z`` the
    posterior mean, or ``mean + std * noise`` for ``posterior="sample"``."""
    import torch

    device = next(vae.parameters()).device
    with torch.no_grad():
        dist = vae.encode(torch.from_numpy(np.ascontiguousarray(pixels)).to(device)).latent_dist
        mean = dist.mean.float().cpu().numpy()
        if posterior == "mean":
            z = mean
        else:
            z = mean + dist.std.float().cpu().numpy() * noise
    return (z * np.float32(scale)).astype(np.float32)


def encode_folder(folder: str | os.PathLike, vae_path: str | os.PathLike, out: str | os.PathLike,
                  resolution: int = 256, scale: float | None = None, posterior: str = "sample",
                  batch_size: int = 32, test_fraction: float = 0.1, seed: int = 0,
                  overwrite: bool = False, progress: bool = True, device: str = "cpu") -> str:
    """What ``toolkit data encode`` does (see the module docstring); returns a summary."""
    from tqdm import tqdm

    import h5py

    from toolkit.plugins.hdf5.commands import _number, _size, split_indices
    from toolkit.plugins.hdf5.format import Meta, write_file

    out, folder = Path(out), Path(folder)
    if posterior not in POSTERIORS:
        raise UsageError(f"--posterior {posterior!r}: expected one of {', '.join(POSTERIORS)}")
    if out.exists() and not overwrite:  # before the slow part
        raise UsageError(f"{out} already exists; choose another --out, or pass --overwrite to replace it")
    if out.is_dir():
        raise UsageError(f"{out} is a folder; expected the path of the .h5 file to write")
    if not out.parent.is_dir():
        raise UsageError(f"{out.parent} does not exist; create the folder first or choose another --out")
    from toolkit.plugins.hdf5.sources import list_images

    files, labels, class_names, skipped = list_images(folder)
    vae = load_vae(vae_path, device=device)
    factor = downsampling(vae)
    if resolution % factor:
        raise UsageError(f"--resolution {resolution}: the VAE downsamples by {factor}, so expected a multiple "
                         f"of {factor} (256 for ImageNet 256 with SD-VAE)")
    scale = default_scale(vae) if scale is None else float(scale)
    if not np.isfinite(scale) or scale == 0:
        raise UsageError(f"--scale {scale:g}: expected a finite, non-zero factor")
    shape = (int(vae.config.latent_channels), resolution // factor, resolution // factor)
    train, test = split_indices(len(files), labels, test_fraction, seed)
    if train.size == 0:
        raise UsageError(f"--test-fraction {test_fraction:g} leaves no training examples of {len(files)}; "
                         f"expected a smaller fraction")
    seen = [np.inf, -np.inf]  # min and max of everything stored

    with tqdm(total=len(files), desc="encoding", unit="img", disable=None if progress else True) as bar:
        def read(indices: np.ndarray) -> np.ndarray:
            block = np.empty((len(indices), *shape), dtype=np.float32)
            for start in range(0, len(indices), batch_size):
                batch = indices[start:start + batch_size]
                pixels = np.stack([load_image(files[i], resolution) for i in batch])
                noise = (np.stack([posterior_noise(seed, int(i), shape) for i in batch])
                         if posterior == "sample" else None)
                latents = encode_images(vae, pixels, posterior, scale, noise)
                if latents.shape[1:] != shape:
                    raise ToolkitError(f"--vae {vae_path}: encoded {resolution}x{resolution} images to latents of "
                                       f"shape {latents.shape[1:]}, expected {shape}")
                if not np.all(np.isfinite(latents)):
                    raise ToolkitError(f"--vae {vae_path}: non-finite latents for {files[int(batch[0])]} "
                                       f"(or another image of its batch)")
                block[start:start + len(batch)] = latents
                seen[0], seen[1] = min(seen[0], float(latents.min())), max(seen[1], float(latents.max()))
                bar.update(len(batch))
            return block

        # value_range is only known once everything is encoded: write beside `out`, fix the
        # attributes, then rename, so `out` appears complete or not at all.
        meta = Meta(shape, "float32", (-1.0, 1.0), f"image folder {folder.resolve()}",
                    0 if labels is None else len(class_names), class_names, scale)
        fd, temporary = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".encoding", dir=out.parent)
        os.close(fd)
        temporary = Path(temporary)
        try:
            write_file(temporary, meta, read, labels, train, test, overwrite=True)
            lo, hi = seen
            with h5py.File(temporary, "r+") as handle:
                group = handle["meta"]
                group.attrs["value_range"] = np.asarray([lo, hi if hi > lo else lo + 1.0], dtype=np.float64)
                group.attrs[VAE_ATTR] = str(Path(vae_path).resolve())
                group.attrs[POSTERIOR_ATTR] = posterior
                group.attrs[RESOLUTION_ATTR] = np.int64(resolution)
                group.attrs["built_by"] = "toolkit data encode"
            os.replace(temporary, out)
        finally:
            temporary.unlink(missing_ok=True)
    classes = f"{len(class_names)} classes" if class_names else "unlabelled"
    note = f" ({skipped} non-image file{'s' if skipped > 1 else ''} skipped)" if skipped else ""
    return (f"{out}: {train.size} train + {test.size} test latents of shape {shape} (posterior {posterior}, "
            f"scale {_number(scale)}) in [{_number(seen[0])}, {_number(seen[1])}], {classes}, "
            f"{_size(out.stat().st_size)}{note}\n"
            f"train on it with (latents are used as stored):\n"
            f"  data: {{name: hdf5, path: {out.resolve()}, normalize: false}}")


# -- reading back: what the dataset and `toolkit sample` need ----------------------------------


def recorded_vae(path: str | os.PathLike) -> tuple[str | None, float]:
    """``(meta.vae or None, meta.scale)`` of an HDF5 data file; ``(None, 1.0)`` when it cannot be read."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            meta = handle.get("meta")
            if meta is None:
                return None, 1.0
            vae = meta.attrs.get(VAE_ATTR)
            return (str(vae) if vae is not None and str(vae) else None), float(meta.attrs.get("scale", 1.0))
    except (OSError, ValueError):
        return None, 1.0


def check_normalize(path: str | os.PathLike, normalize: bool) -> None:
    """Refuse ``normalize: true`` for latents: the dataset would rescale them by a factor the
    decoder does not know."""
    from toolkit.plugins.hdf5.format import DataError

    vae, _ = recorded_vae(path) if normalize else (None, 1.0)
    if vae is not None:
        raise DataError(path, f"holds VAE latents (meta vae = {vae}), which are trained on as stored; "
                              f"expected data.normalize false: data: {{name: hdf5, path: {path}, normalize: false}}")


class LatentDecoder:
    """Latents -> images in [-1, 1]: ``vae.decode(latents / scale)`` clipped, in batches, with the
    VAE at ``vae_path`` loaded on first use (``what`` names where the path came from in errors).
    ``scale`` None: the VAE's ``scaling_factor``."""

    def __init__(self, vae_path: str | os.PathLike, scale: float | None = None, what: str = "--vae",
                 batch_size: int = 16):
        self.vae_path, self.scale, self.what, self.batch_size = str(vae_path), scale, what, batch_size
        self._vae = None

    @property
    def vae(self):
        if self._vae is None:
            self._vae = load_vae(self.vae_path, self.what)
            if self.scale is None:
                self.scale = default_scale(self._vae)
        return self._vae

    @property
    def description(self) -> str:
        return f"decoded with {self.vae_path} (scale {self.scale:g})"

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        import torch

        vae = self.vae
        if samples.ndim != 4 or samples.shape[1] != vae.config.latent_channels:
            raise UsageError(f"{self.what} {self.vae_path}: the samples have shape {samples.shape[1:]}, expected "
                             f"latents with {vae.config.latent_channels} channels (C, H, W) for this VAE")
        images = []
        with torch.no_grad():
            for start in range(0, len(samples), self.batch_size):
                latents = torch.tensor(samples[start:start + self.batch_size], dtype=torch.float32)  # a copy:
                # JAX's arrays arrive read-only
                images.append(vae.decode(latents / self.scale).sample.clamp(-1, 1).numpy())
        return np.concatenate(images).astype(np.float32)


def dataset_decoder(path: str | os.PathLike) -> LatentDecoder | None:
    """The decoder of a data file that records a VAE, or None (with a warning when the file
    records one that cannot be used here: the run then keeps its samples as latents)."""
    import importlib.util
    import warnings

    vae, scale = recorded_vae(path)
    if vae is None:
        return None
    problem = ("its folder does not exist here" if not Path(vae).is_dir() else
               f"diffusers is not installed ({EXTRA})" if importlib.util.find_spec("diffusers") is None else None)
    if problem:
        warnings.warn(f"{path} records the VAE {vae} (meta vae), but {problem}: samples stay latents, so there "
                      f"are no pictures and no image metric (fid, inception_score)", stacklevel=2)
        return None
    return LatentDecoder(vae, scale, f"the VAE recorded in {path} (meta vae),")


def decode_samples(samples: np.ndarray, config, vae_path: str | None = None) -> tuple[np.ndarray, str | None]:
    """``(images in [-1, 1], description)`` for latents sampled from a model of ``config``, or
    ``(samples, None)`` unchanged when there is nothing to decode with.

    The VAE is ``vae_path`` (``--vae``) or the one the run's hdf5 data file records; the scale
    is the file's ``meta.scale``, else the VAE's ``scaling_factor``."""
    recorded, scale = None, None
    if config.data.name == "hdf5" and Path(config.data.options.path).is_file():
        recorded, scale = recorded_vae(config.data.options.path)
        if recorded is None:
            scale = None  # a file of images or plain arrays: its scale is not a VAE's
    vae_path = vae_path or recorded
    if vae_path is None:
        if config.data.name == "hdf5" and samples.ndim == 4 and samples.shape[1] not in (1, 3):
            where = ("records no VAE" if Path(config.data.options.path).is_file()
                     else "is not there to say which VAE encoded them")
            raise UsageError(f"the samples have shape {samples.shape[1:]}, not an image's (latents?), and the "
                             f"run's data file {config.data.options.path} {where}; pass --vae PATH to decode them")
        return samples, None
    decoder = LatentDecoder(vae_path, scale, "--vae" if vae_path != recorded else
                            f"the VAE recorded in {config.data.options.path} (meta vae),")
    images = decoder(samples)
    return images, decoder.description


# -- the command -------------------------------------------------------------------------------


@click.command("encode")
@click.argument("folder", metavar="IMAGE_FOLDER", type=click.Path(file_okay=False))
@click.option("--vae", "vae_path", required=True, type=click.Path(),
              help="A local diffusers AutoencoderKL folder (config.json + weights), e.g. sd-vae-ft-mse.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="The .h5 file to write.")
@click.option("--resolution", type=click.IntRange(min=1), default=256, show_default=True,
              help="Side of the center crop the images are resized to before encoding (ADM preprocessing).")
@click.option("--scale", type=float, default=None,
              help="Factor the latents are multiplied by [default: the VAE's scaling_factor, 0.18215 for SD-VAE].")
@click.option("--posterior", type=click.Choice(POSTERIORS), default="sample", show_default=True,
              help="Store a (seeded) sample of the encoder's posterior, as DiT/MeanFlow train on, or its mean.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Images per VAE call.")
@click.option("--test-fraction", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.1, show_default=True,
              help="Share of the images held out as x_test/y_test (per class); 0: none.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seeds the test split, the stored order and the posterior samples.")
@click.option("--device", default="cpu", show_default=True,
              help="The torch device the VAE runs on, e.g. cuda (the stored latents do not depend on it "
                   "beyond floating-point rounding).")
@click.option("--overwrite", is_flag=True, help="Replace FILE if it exists.")
def encode(folder, vae_path, out, resolution, scale, posterior, batch_size, test_fraction, seed, device, overwrite):
    """Encode IMAGE_FOLDER (one sub-folder per class) to VAE latents in an HDF5 dataset FILE.

    Images are center-cropped to --resolution as ADM/DiT do, encoded with the VAE at --vae
    (nothing is downloaded), multiplied by --scale and stored with their labels, the class
    names and the VAE path; `toolkit sample` decodes samples with the same VAE. Needs
    diffusers: pip install 'meanflow-toolkit[vae]'.
    """
    click.echo(encode_folder(folder, vae_path, out, resolution, scale, posterior, batch_size, test_fraction,
                             seed, overwrite, device=device))
