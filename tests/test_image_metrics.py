"""Image metrics: the Fréchet distance against closed forms; ``classifier_fd`` trained on real
digits, stored, reused and retrained; ``fid`` and ``inception_score`` with a randomly initialised
InceptionV3 saved as the two accepted file formats; registration and errors."""

from __future__ import annotations

import hashlib
import json
import os
import sys

import h5py
import numpy as np
import pytest

from toolkit.cli import main
from toolkit.config import config_from_dict
from toolkit.errors import BackendUnavailableError, ConfigError, ToolkitError, UsageError
from toolkit.metrics import frechet_distance, frechet_distance_from_moments, gaussian_fit
from toolkit.plugins.classifier_fd import ClassifierFDOptions
from toolkit.plugins.classifier_fd.metric import ClassifierFD
from toolkit.plugins.hdf5 import HDF5Options
from toolkit.plugins.synthetic import Synthetic, SyntheticOptions
from toolkit.registry import get_registry

REST = {"model": {"name": "mlp"}, "objective": {"name": "flow_matching"}, "sampler": {"name": "euler"}}


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# -- the Fréchet distance ---------------------------------------------------------------------------


def random_covariance(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T + 0.1 * np.eye(d)


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    rng = np.random.default_rng(0)
    mu_a, mu_b = rng.standard_normal(6), rng.standard_normal(6)
    var_a, var_b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    value = frechet_distance_from_moments(mu_a, np.diag(var_a), mu_b, np.diag(var_b))
    assert value == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_of_non_commuting_2x2_covariances_is_the_closed_form():
    # For 2x2 S_a S_b (eigenvalues real, >= 0): tr sqrt(S_a S_b) = sqrt(tr(S_a S_b) + 2 sqrt(det S_a det S_b)).
    rng = np.random.default_rng(1)
    for _ in range(5):
        sigma_a, sigma_b = random_covariance(rng, 2), random_covariance(rng, 2)
        assert not np.allclose(sigma_a @ sigma_b, sigma_b @ sigma_a)
        mu_a, mu_b = rng.standard_normal(2), rng.standard_normal(2)
        cross = np.sqrt(np.trace(sigma_a @ sigma_b) + 2 * np.sqrt(np.linalg.det(sigma_a) * np.linalg.det(sigma_b)))
        expected = np.sum((mu_a - mu_b) ** 2) + np.trace(sigma_a) + np.trace(sigma_b) - 2 * cross
        assert frechet_distance_from_moments(mu_a, sigma_a, mu_b, sigma_b) == pytest.approx(expected, rel=1e-10)
        assert frechet_distance_from_moments(mu_b, sigma_b, mu_a, sigma_a) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("n", [5, 40, 400])  # fewer, about as many, and more rows than dimensions
def test_frechet_distance_of_features_is_that_of_their_gaussian_fit(n):
    rng = np.random.default_rng(n)
    a = rng.standard_normal((n, 30)) @ rng.standard_normal((30, 30))
    b = rng.standard_normal((n + 3, 30)) + 0.5
    assert frechet_distance(a, b) == pytest.approx(frechet_distance_from_moments(*gaussian_fit(a), *gaussian_fit(b)),
                                                   rel=1e-9)
    scale = frechet_distance(a, b)
    assert scale > 1 and frechet_distance(a, a) <= 1e-10 * scale  # identical sets: 0 up to round-off
    assert frechet_distance(a, a.copy()[::-1]) <= 1e-10 * scale


@pytest.mark.parametrize("n", [5, 400])  # a factor from the rows, and from the covariance
def test_a_factored_reference_gives_the_distance_to_its_moments(n):
    from toolkit.metrics import FrechetReference

    rng = np.random.default_rng(n)
    mu, sigma = gaussian_fit(rng.standard_normal((50, 30)) @ rng.standard_normal((30, 30)))
    reference = FrechetReference(mu, sigma)
    for shift in (0.0, 0.5):  # one factorisation, several sample sets
        a = rng.standard_normal((n, 30)) + shift
        # 1e-7: the moments' side takes square roots of a singular covariance's eigenvalues
        # (n = 5 rows in 30 dimensions), whose rounding errors reach sqrt(eps) of the scale
        assert reference.distance(a) == pytest.approx(frechet_distance_from_moments(*gaussian_fit(a), mu, sigma),
                                                      rel=1e-7)
    with pytest.raises(ValueError, match="features have dimension 29, the reference 30"):
        reference.distance(a[:, 1:])


def test_frechet_distance_of_large_samples_approaches_the_population_value():
    rng = np.random.default_rng(2)
    sigma_a, sigma_b = random_covariance(rng, 3), random_covariance(rng, 3)
    mu_b = np.array([1.0, -2.0, 0.5])
    a = rng.multivariate_normal(np.zeros(3), sigma_a, 100_000)
    b = rng.multivariate_normal(mu_b, sigma_b, 100_000)
    exact = frechet_distance_from_moments(np.zeros(3), sigma_a, mu_b, sigma_b)
    assert frechet_distance(a, b) == pytest.approx(exact, rel=0.02)


def test_running_moments_are_the_gaussian_fit_of_all_rows():
    from toolkit.metrics import RunningMoments

    rng = np.random.default_rng(0)
    rows = 3.0 + rng.standard_normal((1000, 6)) @ rng.standard_normal((6, 6))  # an offset mean, correlated
    moments = RunningMoments()
    for part in np.array_split(rows, [1, 3, 250, 251, 900]):  # batches of 1, 2, 247, 1, 649 and 100 rows
        moments.update(part)
    mean, covariance = moments.fit()
    expected_mean, expected_covariance = gaussian_fit(rows)
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-12)
    np.testing.assert_allclose(covariance, expected_covariance, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="at least 2 rows"):
        RunningMoments().fit()


def test_frechet_distance_rejects_mismatched_features():
    with pytest.raises(ValueError, match="dimension 3, features_b 4"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))


# -- classifier_fd --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "digits.h5"
    assert main(["data", "build", "sklearn:digits", "--out", str(path)]) == 0
    return path


@pytest.fixture
def digits(digits_file, tmp_path):
    """A private copy of the digits file, so each test stores its own classifier beside it."""
    path = tmp_path / "digits.h5"
    path.write_bytes(digits_file.read_bytes())
    return path


def open_dataset(path, **options):
    return get_registry().load("dataset", "hdf5", "torch")(HDF5Options(path=str(path), **options))


def stored_metadata(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        return json.loads(handle.metadata()["classifier_fd"]), sorted(handle.keys())


def test_classifier_is_trained_stored_beside_the_file_and_reused(digits, capsys):
    metric = ClassifierFD(ClassifierFDOptions())
    metric.fit(open_dataset(digits))
    stored = digits.with_name("digits.classifier.safetensors")
    assert metric.trained and metric.stored_at == stored and stored.is_file()
    assert metric.accuracy >= 0.95, metric.accuracy
    err = capsys.readouterr().err
    assert f"held-out accuracy {metric.accuracy:.2%} (180 examples); stored as {stored}" in err

    metadata, names = stored_metadata(stored)
    assert names == ["hidden.0.bias", "hidden.0.weight", "hidden.1.bias", "hidden.1.weight",
                     "output.bias", "output.weight"]
    assert metadata["data"] == {"file": "digits.h5", "size": digits.stat().st_size,
                                "sha256": hashlib.sha256(digits.read_bytes()).hexdigest(),
                                "values_sha256": metadata["data"]["values_sha256"],
                                "shape": [1, 8, 8], "num_classes": 10}
    assert metadata["training"] == {"hidden": [256, 128], "steps": 1000, "batch_size": 128, "lr": 1e-3, "seed": 0}
    assert metadata["held_out"] == {"examples": 180, "accuracy": metric.accuracy}
    assert metadata == metric.info | {"format_version": 1}

    written = stored.stat().st_mtime_ns
    again = ClassifierFD(ClassifierFDOptions())
    renamed = digits.rename(digits.with_name("digits-copy.h5"))  # the same bytes under another name
    stored.rename(renamed.with_name("digits-copy.classifier.safetensors"))
    stored = renamed.with_name("digits-copy.classifier.safetensors")
    again.fit(open_dataset(renamed, cache_chunks=2))  # an option that does not change the values
    assert not again.trained and stored.stat().st_mtime_ns == written
    assert again.accuracy == metric.accuracy
    assert "using the classifier" in capsys.readouterr().err
    images = open_dataset(renamed).reference(50, seed=3).x
    np.testing.assert_array_equal(again.features(images), metric.features(images))
    assert again.features(images).shape == (50, 128)


def test_a_stale_classifier_is_trained_again(digits, tmp_path, capsys):
    ClassifierFD(ClassifierFDOptions(steps=200)).fit(open_dataset(digits))
    stored = digits.with_name("digits.classifier.safetensors")
    capsys.readouterr()

    other_settings = ClassifierFD(ClassifierFDOptions(steps=300))
    other_settings.fit(open_dataset(digits))
    assert other_settings.trained and stored_metadata(stored)[0]["training"]["steps"] == 300
    assert "is stale (it differs in training.steps)" in capsys.readouterr().err

    # The same name, other bytes (another shuffle of the digits): the hash tells.
    rebuilt = tmp_path / "rebuilt.h5"
    assert main(["data", "build", "sklearn:digits", "--out", str(rebuilt), "--seed", "1"]) == 0
    os.replace(rebuilt, digits)
    capsys.readouterr()
    other_data = ClassifierFD(ClassifierFDOptions(steps=300))
    other_data.fit(open_dataset(digits))
    assert other_data.trained and "is stale (it differs in data.sha256, data.values_sha256)" in capsys.readouterr().err
    assert stored_metadata(stored)[0]["data"]["sha256"] == hashlib.sha256(digits.read_bytes()).hexdigest()

    # Other data options change what the classifier sees too.
    raw_values = ClassifierFD(ClassifierFDOptions(steps=300))
    raw_values.fit(open_dataset(digits, normalize=False))
    assert raw_values.trained and "is stale (it differs in data.values_sha256)" in capsys.readouterr().err

    # An explicit path: stored there, and found there the next time.
    elsewhere = tmp_path / "elsewhere" / "digits-mlp.safetensors"  # its folder is made
    explicit = ClassifierFD(ClassifierFDOptions(steps=300, path=str(elsewhere)))
    explicit.fit(open_dataset(digits))
    assert explicit.trained and explicit.stored_at == elsewhere and elsewhere.is_file()
    explicit.fit(open_dataset(digits))
    assert not explicit.trained


def test_classifier_fd_separates_digits_from_noise_and_shuffled_pixels(digits, capsys):
    dataset = open_dataset(digits)
    metric = ClassifierFD(ClassifierFDOptions())
    metric.fit(dataset)
    reference = dataset.reference(180, seed=0).x
    real = next(dataset.batches(180, seed=5)).x  # training digits: other images than the held-out ones
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(reference.shape)
    shuffled = np.stack([image.ravel()[rng.permutation(image.size)].reshape(image.shape) for image in real])
    fd_real, fd_noise, fd_shuffled = metric(real, reference), metric(noise, reference), metric(shuffled, reference)
    assert fd_real < 0.2 * fd_shuffled and fd_real < 0.2 * fd_noise, (fd_real, fd_shuffled, fd_noise)
    assert metric(reference, reference) == pytest.approx(0.0, abs=1e-8 * fd_real)
    assert not metric.higher_is_better


def test_classifier_fd_errors(digits, tmp_path, capsys):
    metric = ClassifierFD(ClassifierFDOptions())
    with pytest.raises(ToolkitError, match=r"classifier_fd has no classifier yet: call fit\(dataset\)"):
        metric(np.zeros((4, 1, 8, 8)), np.zeros((4, 1, 8, 8)))

    unlabelled = tmp_path / "unlabelled.h5"
    with h5py.File(digits) as source, h5py.File(unlabelled, "w") as handle:
        handle.create_dataset("x", data=source["x"][:], chunks=(256, 1, 8, 8))
        meta = handle.create_group("meta")
        for key, value in source["meta"].attrs.items():
            if key != "class_names":
                meta.attrs[key] = value
        meta.attrs["num_classes"] = 0
    with pytest.raises(UsageError, match="needs a labelled data set .* this HDF5Dataset has num_classes 0"):
        metric.fit(open_dataset(unlabelled))

    stored = digits.with_name("digits.classifier.safetensors")
    stored.write_bytes(b"not a safetensors file")
    with pytest.raises(ToolkitError, match=f"{stored}: not a readable classifier_fd classifier file .* delete it"):
        metric.fit(open_dataset(digits))
    assert stored.read_bytes() == b"not a safetensors file"  # never overwritten
    from safetensors.numpy import save_file

    save_file({"weights": np.zeros(3)}, str(stored))  # someone else's safetensors file
    with pytest.raises(ToolkitError, match="not a readable classifier_fd classifier file .no 'classifier_fd' metadata"):
        metric.fit(open_dataset(digits))

    with pytest.raises(UsageError, match="path='c.safetensors' needs a data set read from a file"):
        ClassifierFD(ClassifierFDOptions(path="c.safetensors")).fit(
            Synthetic(SyntheticOptions(shape=(1, 4, 4), num_classes=3)))


def test_classifier_fd_trains_in_memory_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    metric = ClassifierFD(ClassifierFDOptions(hidden=(16,), steps=20, batch_size=32))
    metric.fit(Synthetic(SyntheticOptions(shape=(1, 4, 4), num_classes=3)))
    assert metric.trained and metric.stored_at is None and list(tmp_path.iterdir()) == []
    assert {k: v for k, v in metric.info["data"].items() if k != "values_sha256"} == \
        {"dataset": "Synthetic", "shape": [1, 4, 4], "num_classes": 3}
    assert np.isfinite(metric(np.ones((10, 1, 4, 4)), np.zeros((10, 1, 4, 4))))
    with pytest.raises(ValueError, match=r"expected images of shape \(1, 4, 4\) \(16 values each"):
        metric(np.zeros((10, 1, 8, 8)), np.zeros((10, 1, 4, 4)))


# -- registration -----------------------------------------------------------------------------------


def test_metrics_come_from_the_registry_and_configs(digits, capsys):
    registry = get_registry()
    assert registry.load("metric", "classifier_fd", "torch") is ClassifierFD
    assert registry.load("metric", "classifier_fd", "jax") is ClassifierFD
    config = config_from_dict({**REST, "data": {"name": "hdf5", "path": str(digits)},
                               "eval": {"metric": {"name": "classifier_fd", "hidden": [64], "steps": 50}}})
    assert config.eval.metric.options == ClassifierFDOptions(hidden=(64,), steps=50)
    with pytest.raises(ConfigError, match="eval.metric.hidden"):
        config_from_dict({**REST, "data": {"name": "hdf5", "path": str(digits)},
                          "eval": {"metric": {"name": "classifier_fd", "hidden": [0]}}})
    with pytest.raises(ConfigError, match="eval.metric.weights.*existing local file of Inception weights"):
        config_from_dict({**REST, "data": {"name": "hdf5", "path": str(digits)},
                          "eval": {"metric": {"name": "fid", "weights": str(digits.with_name("absent.pth"))}}})

    code, out, _ = run_cli(capsys, "plugins", "--json")
    rows = {(row["kind"], row["name"]): row for row in json.loads(out)}
    for name in ("classifier_fd", "fid", "inception_score"):
        assert rows["metric", name]["backends"] == ["jax", "torch"]
        assert rows["metric", name]["plugin"] == "meanflow-toolkit"
    assert registry.get("metric", "inception_score").summary.startswith("Inception score (IS)")


def test_inception_metrics_without_torch_name_the_extra(monkeypatch):
    for module in ("toolkit.plugins.inception.metric", "toolkit.plugins.inception.network"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setitem(sys.modules, "torch", None)
    expected = r"metric 'fid' needs PyTorch for the jax backend.*pip install 'meanflow-toolkit\[torch\]'"
    with pytest.raises(BackendUnavailableError, match=expected):
        get_registry().load("metric", "fid", "jax")


# -- fid and inception_score ----------------------------------------------------------------------


def test_fid_and_inception_score_with_random_weights(inception_files):
    from toolkit.plugins.inception import FIDOptions, InceptionScoreOptions

    safetensors_file, torch_file, _ = inception_files
    registry = get_registry()
    fid = registry.load("metric", "fid", "jax")(FIDOptions(weights=str(safetensors_file), batch_size=3))
    rng = np.random.default_rng(0)
    images = np.tanh(rng.standard_normal((4, 1, 8, 8)))  # grayscale, repeated to 3 channels
    noise = rng.uniform(-1, 1, (4, 3, 12, 12))
    fid_noise = fid(images, noise)
    assert np.isfinite(fid_noise) and fid_noise > 1.0, fid_noise
    assert fid(images, images) <= 1e-8 * fid_noise
    assert fid.activations(images)[0].shape == (4, 2048) and not fid.higher_is_better

    score = registry.load("metric", "inception_score", "torch")(
        InceptionScoreOptions(weights=str(torch_file), batch_size=4, splits=2))
    value = score(images, None)
    assert np.isfinite(value) and value >= 1.0 and score.higher_is_better
    assert score.std is not None and np.isfinite(score.std)
    print(f"random-weights Inception: FID(images, noise) {fid_noise:.4g}, IS {value:.6g}")


def test_both_weight_formats_load_the_same_parameters(inception_files):
    import torch

    from toolkit.plugins.inception.network import load_inception

    safetensors_file, torch_file, state = inception_files
    for path in (safetensors_file, torch_file):
        loaded = load_inception(path).state_dict()
        assert all(torch.equal(loaded[name], value) for name, value in state.items()), path
    without_counters = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert len(without_counters) < len(state)
    torch.save(without_counters, torch_file.with_name("old.pth"))  # as files from before torch 0.4.1
    assert torch.equal(load_inception(torch_file.with_name("old.pth")).fc.weight, state["fc.weight"])


def test_inception_scores_of_known_predictions():
    from toolkit.plugins.inception.metric import inception_score

    labels = np.arange(40) % 8
    confident = 60.0 * np.eye(8)[labels]  # p(y|x) one-hot: the score of a part is exp(entropy of its labels)
    mean, std = inception_score(confident, splits=1)
    assert mean == pytest.approx(8.0, rel=1e-9) and std == 0.0
    parts = np.array_split(labels[np.random.default_rng(3).permutation(40)], 5)  # the documented shuffle
    expected = []
    for part in parts:
        p = np.bincount(part, minlength=8) / len(part)
        expected.append(np.exp(-np.sum(p[p > 0] * np.log(p[p > 0]))))
    mean, std = inception_score(confident, splits=5, seed=3)
    assert mean == pytest.approx(np.mean(expected), rel=1e-9) and std == pytest.approx(np.std(expected), rel=1e-9)
    assert mean < 8.0  # 8 samples per part rarely hold all 8 classes
    mean, std = inception_score(np.tile(np.arange(8.0), (40, 1)), splits=4)  # the same prediction for all
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="3 samples cannot be cut into 10 splits"):
        inception_score(np.zeros((3, 8)), splits=10)


def test_inception_weight_errors_name_the_file_and_keys(inception_files, tmp_path):
    import torch

    from toolkit.plugins.inception.network import load_inception

    _, _, state = inception_files
    missing = tmp_path / "absent.pth"
    with pytest.raises(UsageError, match=f"{missing}: no such Inception weight file.*never download"):
        load_inception(missing)

    foreign = {"Conv2d_1a_3x3.conv.weight": state["Conv2d_1a_3x3.conv.weight"], "classifier.weight": torch.zeros(3)}
    torch.save(foreign, tmp_path / "foreign.pth")
    with pytest.raises(ToolkitError) as error:
        load_inception(tmp_path / "foreign.pth")
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'foreign.pth'}: not the weights of the FID InceptionV3")
    assert "missing keys: Conv2d_1a_3x3.bn.bias, Conv2d_1a_3x3.bn.running_mean" in message
    assert "unexpected keys: classifier.weight" in message and " more" in message

    reshaped = dict(state, **{"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)})
    from safetensors.torch import save_file

    save_file(reshaped, str(tmp_path / "imagenet.safetensors"))
    with pytest.raises(ToolkitError, match=r"wrong shapes: fc.bias \(1000,\) \(expected \(1008,\)\), "
                                           r"fc.weight \(1000, 2048\) \(expected \(1008, 2048\)\)"):
        load_inception(tmp_path / "imagenet.safetensors")

    (tmp_path / "corrupt.pth").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ToolkitError, match="corrupt.pth: not a readable weight file"):
        load_inception(tmp_path / "corrupt.pth")


def test_preprocessing_quantises_repeats_gray_and_resizes():
    import torch

    from toolkit.plugins.inception.metric import preprocess

    gray = torch.from_numpy(np.random.default_rng(0).uniform(-1.2, 1.2, (2, 1, 8, 8)).astype(np.float32))
    out = preprocess(gray)
    assert out.shape == (2, 3, 299, 299) and out.min() >= -1 and out.max() <= 1
    torch.testing.assert_close(out, preprocess(gray.expand(-1, 3, -1, -1)))
    levels = torch.round((preprocess(torch.full((1, 1, 4, 4), 0.3)) + 1) / 2 * 255, decimals=3)
    assert levels.unique().tolist() == [166.0]  # 0.3 -> 165.75 -> the 8-bit level 166


def test_fid_statistics_of_a_data_set_are_those_of_its_training_images(inception_files, tmp_path, capsys):
    """`toolkit fid-stats DATA.h5`: the CIFAR-10 reference (its training set), from the stored
    uint8 images mapped to [-1, 1]; a data set of latents is refused with the reason."""
    from toolkit.plugins.inception import FIDOptions
    from toolkit.plugins.inception.metric import FID

    weights = str(inception_files[0])
    images = np.random.default_rng(0).integers(0, 256, (7, 3, 32, 32), dtype=np.uint8)
    np.savez(tmp_path / "images.npz", x=images, y=np.arange(7) % 2)
    data = tmp_path / "data.h5"
    assert main(["data", "build", str(tmp_path / "images.npz"), "--out", str(data), "--test-fraction", "0.3"]) == 0
    with h5py.File(data) as handle:
        train = handle["x"][:]
    assert len(train) == 5
    capsys.readouterr()
    stats = tmp_path / "stats.npz"
    assert main(["fid-stats", str(data), "--weights", weights, "--out", str(stats), "--batch-size", "2"]) == 0
    assert f"Inception statistics of 5 images of {data} (its training split, 32x32 as stored)" in capsys.readouterr().out
    features = FID(FIDOptions(weights=weights)).features(train / 127.5 - 1)
    with np.load(stats) as stored:
        np.testing.assert_allclose(stored["mu"], features.mean(axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stored["sigma"], np.cov(features, rowvar=False), rtol=1e-4, atol=1e-6)
    np.savez(tmp_path / "latents.npz", x=np.random.default_rng(1).standard_normal((4, 4, 8, 8)).astype(np.float32))
    assert main(["data", "build", str(tmp_path / "latents.npz"), "--out", str(tmp_path / "latents.h5")]) == 0
    capsys.readouterr()
    assert main(["fid-stats", str(tmp_path / "latents.h5"), "--weights", weights, "--out", str(stats),
                 "--overwrite"]) == 2
    assert "examples of shape (4, 8, 8); expected images (1 or 3 channels" in capsys.readouterr().err
