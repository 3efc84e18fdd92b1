"""`toolkit data encode` (images -> VAE latents in HDF5) and the decoding in `toolkit sample`,
with a tiny randomly initialised diffusers AutoencoderKL saved by the test itself."""

from __future__ import annotations

import json
import re
import sys
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("diffusers", reason="the vae extra: pip install 'meanflow-toolkit[vae]'")
torch = pytest.importorskip("torch")
from PIL import Image  # noqa: E402

from toolkit.cli import main  # noqa: E402
from toolkit.plugins.hdf5 import HDF5Options  # noqa: E402
from toolkit.plugins.hdf5.commands import split_indices  # noqa: E402
from toolkit.plugins.hdf5.dataset import HDF5Dataset  # noqa: E402
from toolkit.plugins.hdf5.format import DataError, inspect_file  # noqa: E402
from toolkit.plugins.hdf5.latents import center_crop, decode_samples, posterior_noise  # noqa: E402

RES = 32  # images are cropped to 32x32; the VAE halves once: latents (4, 16, 16)
SIZES = {"cat": [(40, 50), (64, 48), (33, 33), (100, 70)], "dog": [(32, 32), (80, 60), (45, 90)]}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A tiny AutoencoderKL (two blocks: downsampling 2) and an image folder of two classes
    with images of various sizes; the files in folder-listing order."""
    from diffusers import AutoencoderKL

    root = tmp_path_factory.mktemp("latents")
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
                        norm_num_groups=4, sample_size=RES).eval()
    vae.save_pretrained(root / "vae")
    rng = np.random.default_rng(0)
    files = []
    for name, sizes in SIZES.items():
        (root / "images" / name).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            files.append(root / "images" / name / f"{i}.png")
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(files[-1])
    (root / "images" / "cat" / "notes.txt").write_text("not an image")
    return SimpleNamespace(root=root, vae=vae, vae_path=root / "vae", images=root / "images", files=files,
                           labels=np.array([0] * 4 + [1] * 3))


def encode(made, out, *extra):
    return main(["data", "encode", str(made.images), "--vae", str(made.vae_path), "--out", str(out),
                 "--resolution", str(RES), "--batch-size", "3", "--test-fraction", "0.3", *extra])


def adm_pixels(path) -> np.ndarray:
    """The ADM crop written out step by step for this test: box-halve, bicubic, center square."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        while min(image.size) >= 2 * RES:
            image = image.resize((image.size[0] // 2, image.size[1] // 2), resample=Image.BOX)
        f = RES / min(image.size)
        image = image.resize((round(image.size[0] * f), round(image.size[1] * f)), resample=Image.BICUBIC)
        a = np.asarray(image)
    top, left = (a.shape[0] - RES) // 2, (a.shape[1] - RES) // 2
    return a[top:top + RES, left:left + RES].transpose(2, 0, 1).astype(np.float32) / 127.5 - 1


def posterior(made, indices):
    pixels = torch.from_numpy(np.stack([adm_pixels(made.files[i]) for i in indices]))
    with torch.no_grad():
        dist = made.vae.encode(pixels).latent_dist
    return dist.mean.numpy(), dist.std.numpy()


def test_center_crop_is_adm():
    image = Image.fromarray(np.arange(70 * 100 * 3, dtype=np.uint32).reshape(70, 100, 3).astype(np.uint8))
    # 100x70: short side 70 >= 64 -> box-halved to 50x35 -> bicubic to 46x32 -> columns 7..38
    out = center_crop(image, RES)
    assert out.size == (RES, RES)
    step = image.resize((50, 35), resample=Image.BOX).resize((46, 32), resample=Image.BICUBIC)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(step)[:, 7:39])


@pytest.mark.parametrize("mode", ["mean", "sample"])
def test_encode_stores_scaled_latents_labels_and_the_vae(made, tmp_path, capsys, mode):
    out = tmp_path / "latents.h5"
    assert encode(made, out, "--posterior", mode, "--seed", "3") == 0
    printed = capsys.readouterr().out
    assert f"data: {{name: hdf5, path: {out.resolve()}, normalize: false}}" in printed
    assert "1 non-image file skipped" in printed
    info = inspect_file(out)
    assert info.shape == (4, RES // 2, RES // 2) and info.dtype == "float32"
    assert info.class_names == ("cat", "dog") and info.num_classes == 2
    assert info.scale == pytest.approx(0.18215)  # the VAE config's scaling_factor
    assert info.source.endswith(str(made.images.resolve()))
    import h5py

    with h5py.File(out) as handle:
        meta = dict(handle["meta"].attrs)
        x, y = handle["x"][:], handle["y"][:]
        x_test, y_test = handle["x_test"][:], handle["y_test"][:]
    assert meta["vae"] == str(made.vae_path.resolve()) and meta["vae_posterior"] == mode
    assert meta["resolution"] == RES
    # rows are the seeded split of `data build`; compare each with encoding the image directly
    train, test = split_indices(len(made.files), made.labels, 0.3, 3)
    for rows, stored, labels in ((train, x, y), (test, x_test, y_test)):
        np.testing.assert_array_equal(labels, made.labels[rows])
        mean, std = posterior(made, rows)
        z = mean if mode == "mean" else mean + std * np.stack([posterior_noise(3, int(i), info.shape) for i in rows])
        np.testing.assert_allclose(stored, 0.18215 * z, rtol=1e-4, atol=1e-5)
        if mode == "sample":
            assert np.abs(stored - 0.18215 * mean).max() > 0.01  # a draw, not the mean
    both = np.concatenate([x, x_test])
    assert info.value_range == pytest.approx((both.min(), both.max()))
    # latents are read back as stored; normalising them is refused with the fix in the message
    with HDF5Dataset(HDF5Options(str(out), normalize=False)) as data:
        batch = data.reference(len(x_test), seed=0)
        assert np.isin(batch.x.reshape(len(batch.x), -1)[:, 0], x_test.reshape(len(x_test), -1)[:, 0]).all()
    with pytest.raises(DataError, match="normalize false"):
        HDF5Dataset(HDF5Options(str(out)))


def test_scale_option_and_overwrite(made, tmp_path, capsys):
    out = tmp_path / "latents.h5"
    assert encode(made, out, "--posterior", "mean", "--scale", "1", "--test-fraction", "0") == 0
    assert inspect_file(out).scale == 1.0 and inspect_file(out).test is None
    assert encode(made, out) == 2
    assert "already exists" in capsys.readouterr().err
    assert encode(made, out, "--overwrite") == 0
    assert inspect_file(out).scale == pytest.approx(0.18215)
    assert [p.name for p in tmp_path.iterdir()] == ["latents.h5"]  # no temporary file left
    capsys.readouterr()
    assert main(["data", "info", str(out)]) == 0
    assert f"encoded with:    VAE {made.vae_path.resolve()}, posterior sample, resolution" in capsys.readouterr().out


def test_sample_decodes_latents_of_a_trained_checkpoint(made, tmp_path, capsys):
    data = tmp_path / "latents.h5"
    assert encode(made, data) == 0
    config = latent_run_config(tmp_path / "run.yaml", data, 3, "{num_samples: 4}", "ema: {decays: [0.9]}")
    run = tmp_path / "run"
    assert main(["run", str(config), "--out", str(run), "--no-progress"]) == 0
    picture = tmp_path / "s.png"
    assert main(["sample", str(run), "--n", "5", "--out", str(picture)]) == 0
    assert f"decoded with {made.vae_path.resolve()} (scale 0.18215)" in capsys.readouterr().out
    images = np.load(tmp_path / "s.npy")
    assert images.shape == (5, 3, RES, RES) and images.min() >= -1 and images.max() <= 1
    with Image.open(picture) as shown:
        assert shown.size[0] >= RES  # a picture of images, not refused as latents
    # without the data file nothing says which VAE made the latents: the error says what to pass
    data.rename(tmp_path / "moved.h5")
    assert main(["sample", str(run), "--n", "2", "--out", str(picture)]) == 2
    assert "pass --vae PATH" in capsys.readouterr().err
    assert main(["sample", str(run), "--n", "2", "--out", str(picture), "--vae", str(made.vae_path)]) == 0
    assert np.load(tmp_path / "s.npy").shape == (2, 3, RES, RES)


def test_decode_samples_is_vae_decode_of_unscaled_latents(made, tmp_path):
    assert encode(made, tmp_path / "latents.h5", "--scale", "0.5") == 0
    config = SimpleNamespace(data=SimpleNamespace(name="hdf5", options=SimpleNamespace(path=str(tmp_path / "latents.h5"))))
    latents = np.random.default_rng(1).standard_normal((3, 4, RES // 2, RES // 2)).astype(np.float32)
    images, note = decode_samples(latents, config)
    with torch.no_grad():
        expected = made.vae.decode(torch.from_numpy(latents) / 0.5).sample.clamp(-1, 1).numpy()
    np.testing.assert_allclose(images, expected, rtol=1e-5, atol=1e-5)
    assert "scale 0.5" in note
    # data that is not latents: nothing to decode
    plain = SimpleNamespace(data=SimpleNamespace(name="toy2d", options=None))
    points = np.zeros((3, 2), dtype=np.float32)
    assert decode_samples(points, plain) == (points, None)


def test_errors_name_the_path_and_the_fix(made, tmp_path, capsys, monkeypatch):
    def run(folder, vae):
        code = main(["data", "encode", str(folder), "--vae", str(vae), "--out", str(tmp_path / "o.h5"),
                     "--resolution", str(RES)])
        return code, capsys.readouterr().err

    code, err = run(made.images, tmp_path / "nowhere")
    assert code == 2 and f"--vae {tmp_path / 'nowhere'}: no such folder" in err
    (tmp_path / "empty_vae").mkdir()
    code, err = run(made.images, tmp_path / "empty_vae")
    assert code == 2 and "not a diffusers VAE folder (no config.json)" in err
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    code, err = run(made.images, tmp_path / "unet")
    assert code == 2 and "'UNet2DModel', not an AutoencoderKL" in err
    (tmp_path / "no_weights").mkdir()
    (tmp_path / "no_weights" / "config.json").write_text((made.vae_path / "config.json").read_text())
    code, err = run(made.images, tmp_path / "no_weights")
    assert code == 2 and f"--vae {tmp_path / 'no_weights'}: cannot load the AutoencoderKL" in err
    (tmp_path / "no_images" / "cat").mkdir(parents=True)
    code, err = run(tmp_path / "no_images", made.vae_path)
    assert code == 1 and "class folder 'cat' holds no images" in err
    (tmp_path / "bare").mkdir()
    code, err = run(tmp_path / "bare", made.vae_path)
    assert code == 1 and "holds no images" in err
    assert main(["data", "encode", str(made.images), "--vae", str(made.vae_path), "--out",
                 str(tmp_path / "x.h5"), "--resolution", "33"]) == 2
    assert "multiple of 2" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if the extra were not installed
    code, err = run(made.images, made.vae_path)
    assert code == 2 and "pip install 'meanflow-toolkit[vae]'" in err
    assert not (tmp_path / "x.h5").exists()


def latent_run_config(path, data, steps: int, eval_section: str, extra: str = ""):
    """A tiny MeanFlow MLP run on the latents in ``data``, checkpointed at its last step."""
    path.write_text(f"""
run: {{name: latents_tiny, seed: 0, steps: {steps}, batch_size: 4}}
data: {{name: hdf5, path: {data}, normalize: false}}
model: {{name: mlp, hidden: 32, depth: 2, time_embed_dim: 16}}
objective: {{name: meanflow}}
sampler: {{name: meanflow, nfe: 1}}
checkpoint: {{every: {steps}, keep: 1}}
eval: {eval_section}
{extra}
""")
    return path


def latent_fid_config(path, data, weights, stats):
    return latent_run_config(path, data, 4, f"{{num_samples: 6, batch_size: 4, metric: {{name: fid, weights: {weights}, "
                                            f"reference: {stats}}}}}",
                             "logging: {samples_every: 2, sample_nfe: [1], progress: false}")


def test_the_imagenet_recipe_at_toy_scale(made, inception_files, backend, tmp_path, capsys):
    """The README's recipe, images to a 1-NFE FID, with a tiny VAE and random Inception weights:
    encode, reference statistics, a run whose pictures and FID decode the latents, eval."""
    from toolkit.cli import _checkpoint_engine
    from toolkit.evaluation import evaluate
    from toolkit.metrics import frechet_distance_from_moments
    from toolkit.plugins.inception import FIDOptions
    from toolkit.plugins.inception.metric import FID
    from tests.test_training import read_events

    weights = inception_files[0]
    data, stats = tmp_path / "latents.h5", tmp_path / "stats.npz"
    assert encode(made, data) == 0
    assert main(["fid-stats", str(made.images), "--weights", str(weights), "--out", str(stats),
                 "--resolution", str(RES), "--batch-size", "3"]) == 0
    assert "Inception statistics of 7 images" in capsys.readouterr().out
    fid = FID(FIDOptions(weights=str(weights)))
    features = fid.features(np.stack([adm_pixels(f) for f in made.files]))
    with np.load(stats) as stored:  # the features of the ADM-cropped images, whatever the batching
        np.testing.assert_allclose(stored["mu"], features.mean(axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stored["sigma"], np.cov(features, rowvar=False), rtol=1e-4, atol=1e-6)
        assert int(stored["count"]) == 7 and int(stored["resolution"]) == RES

    config = latent_fid_config(tmp_path / "run.yaml", data, weights, stats)
    run = tmp_path / "run"
    assert main(["run", str(config), "--backend", backend, "--out", str(run)]) == 0
    logged = json.loads((run / "metrics.json").read_text())
    assert all(np.isfinite(logged[k]) for k in ("fid", "fid_of_noise", "fid_of_training_data"))
    with Image.open(run / "samples.png") as shown:  # decoded images, a row per class
        assert shown.size[0] >= 10 * RES
    events = read_events(run)
    assert {"samples/1_nfe", "eval/samples"} <= set(events.Tags()["images"])
    assert [e.step for e in events.Images("samples/1_nfe")] == [2, 4]

    # the logged number is the FID of the decoded samples against the statistics, by hand
    registry, _, metadata, engine, cfg, _ = _checkpoint_engine(str(run), backend, ["eval.anchors=false"])
    dataset = registry.load("dataset", "hdf5", backend)(cfg.data.options)
    results, samples = evaluate(cfg, backend, registry, engine, dataset, int(metadata["step"]))
    assert samples.shape == (6, 4, RES // 2, RES // 2)  # the model's latents; decoded only to measure
    with torch.no_grad():
        images = made.vae.decode(torch.from_numpy(samples) / 0.18215).sample.clamp(-1, 1).numpy()
    sample_features = fid.features(images)
    with np.load(stats) as stored:
        by_hand = frechet_distance_from_moments(sample_features.mean(axis=0), np.cov(sample_features, rowvar=False),
                                                stored["mu"], stored["sigma"])
    np.testing.assert_allclose(results["fid"], by_hand, rtol=1e-5)
    np.testing.assert_allclose(results["fid"], logged["fid"], rtol=1e-6)
    # chunking changes nothing but rounding: one chunk of all six samples, no anchors
    assert main(["eval", str(run), "--backend", backend, "--json", "--set", "eval.batch_size=100",
                 "--set", "eval.anchors=false"]) == 0
    whole = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    np.testing.assert_allclose(whole["fid"], logged["fid"], rtol=1e-4)
    assert "fid_of_noise" not in whole


def test_an_image_metric_on_latents_without_their_vae_is_an_early_error(made, inception_files, tmp_path, capsys):
    import h5py

    data, stats = tmp_path / "latents.h5", tmp_path / "stats.npz"
    assert encode(made, data) == 0
    np.savez(stats, mu=np.zeros(2048), sigma=np.eye(2048))
    with h5py.File(data, "r+") as handle:  # as if the file came from another machine
        handle["meta"].attrs["vae"] = str(tmp_path / "elsewhere" / "vae")
    config = latent_fid_config(tmp_path / "run.yaml", data, inception_files[0], stats)
    with pytest.warns(UserWarning, match="records the VAE .*elsewhere.* its folder does not exist here"):
        code = main(["run", str(config), "--out", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert "eval.metric fid measures images" in err and "(4, 16, 16)" in err
    assert not (tmp_path / "run" / "checkpoints").exists()  # before any training


def test_fid_statistics_errors_name_the_file(inception_files, tmp_path, capsys):
    from toolkit.plugins.inception import FIDOptions
    from toolkit.plugins.inception.metric import FID

    weights = str(inception_files[0])
    np.savez(tmp_path / "no_sigma.npz", mu=np.zeros(2048))
    np.savez(tmp_path / "small.npz", mu=np.zeros(8), sigma=np.eye(8))
    (tmp_path / "junk.npz").write_text("not a zip")
    for name, expected in (("no_sigma.npz", "no sigma array"), ("small.npz", "mu has shape (8,)"),
                           ("junk.npz", "not a readable .npz")):
        with pytest.raises(ValueError, match=re.escape(expected)) as error:
            FID(FIDOptions(weights=weights, reference=str(tmp_path / name)))
        assert name in str(error.value) and "toolkit fid-stats" in str(error.value)
    assert main(["fid-stats", str(tmp_path), "--weights", weights, "--out", str(tmp_path / "s.npz")]) == 1
    assert "holds no images" in capsys.readouterr().err
