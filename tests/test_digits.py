"""The main demo, configs/meanflow_digits.yaml, at test length in each backend, and the
commands that read its checkpoints: `toolkit sample` and `toolkit eval`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests_paths import CONFIGS
from toolkit.cli import main
from toolkit.plotting import image_grid

# The shipped architecture and objective, trained briefly; the data file is shared by the
# tests of a session (built once from scikit-learn's digits through data.source).
SHORT = ["run.steps=300", "checkpoint.every=300", "logging.every=50", "logging.samples_every=150", "eval.nfe=[2]",
         "eval.num_samples=500", "ema.decays=[0.99]"]


@pytest.fixture(scope="module")
def digits_file(tmp_path_factory):
    return tmp_path_factory.mktemp("data") / "digits.h5"


@pytest.fixture(scope="module")
def short_runs(tmp_path_factory, digits_file):
    """One short run per backend, trained once for the tests of this module."""
    runs = {}

    def run(backend):
        if backend not in runs:
            out = tmp_path_factory.mktemp(f"digits-{backend}")
            settings = [*SHORT, f"data.path={digits_file}"]
            argv = ["run", str(CONFIGS / "meanflow_digits.yaml"), "--backend", backend, "--out", str(out),
                    "--no-progress", *[f"--set={s}" for s in settings]]
            assert main(argv) == 0
            runs[backend] = out
        return runs[backend]

    return run


def test_a_short_run_learns_digits(backend, short_runs, capsys):
    out = short_runs(backend)
    results = json.loads((out / "metrics.json").read_text())
    fd, noise, floor = (results[k] for k in ("classifier_fd", "classifier_fd_of_noise",
                                             "classifier_fd_of_training_data"))
    assert results["nfe"] == 1 and results["weights"] == "ema 0.99"
    # The untrained model samples the noise itself; 300 steps already move far towards digits.
    assert np.isfinite(fd) and floor < fd < 0.5 * noise, results
    assert (out / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out), size_guidance={"images": 0})
    events.Reload()
    assert {"samples/1_nfe", "samples/2_nfe", "eval/samples"} <= set(events.Tags()["images"])
    assert [e.step for e in events.Images("samples/1_nfe")] == [150, 300]


def test_sample_writes_a_grid_of_the_asked_class(backend, short_runs, tmp_path, capsys):
    out = short_runs(backend)
    picture = tmp_path / "three.png"
    assert main(["sample", str(out), "--backend", backend, "--nfe", "2", "--n", "20", "--class", "3",
                 "--out", str(picture)]) == 0
    assert "20 samples at 2 NFE with ema 0.99 weights" in capsys.readouterr().out
    samples = np.load(tmp_path / "three.npy")
    assert samples.shape == (20, 1, 8, 8) and np.isfinite(samples).all()
    import matplotlib.image

    assert matplotlib.image.imread(str(picture)).shape[:2] == image_grid(samples).shape[:2]
    # the other backend samples this checkpoint too, with the same result
    other = {"torch": "jax", "jax": "torch"}[backend]
    assert main(["sample", str(out), "--backend", other, "--nfe", "2", "--n", "20", "--class", "3",
                 "--out", str(tmp_path / "other.png")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "other.npy"), samples, rtol=1e-4, atol=1e-4)


def test_sample_errors(short_runs, tmp_path, capsys):
    out = short_runs("torch")
    assert main(["sample", str(out), "--class", "10", "--out", str(tmp_path / "x.png")]) == 2
    assert "--class 10: expected a class in [0, 9]" in capsys.readouterr().err
    assert main(["sample", str(out), "--guidance", "2", "--out", str(tmp_path / "x.png")]) == 2
    assert "the meanflow sampler has no guidance option (MeanFlow folds guidance into training" in capsys.readouterr().err
    assert main(["sample", str(out), "--weights", "0.5", "--out", str(tmp_path / "x.png")]) == 2
    assert "no EMA weights with decay 0.5 in the checkpoint; it has: model, 0.99" in capsys.readouterr().err
    assert main(["sample", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    assert "a folder without checkpoints" in capsys.readouterr().err


def test_eval_repeats_the_number_the_run_logged(backend, short_runs, capsys):
    out = short_runs(backend)
    logged = json.loads((out / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(out), "--backend", backend, "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again.pop("weights") == logged.pop("weights") == "ema 0.99"
    for of_training in ("loss", "seconds_per_step", "compile_seconds", "wall_seconds"):
        logged.pop(of_training)
    assert again == pytest.approx(logged, rel=1e-6) and "classifier_fd_2nfe" in again
    # another metric, and the raw weights: different numbers, same anchors' meaning
    assert main(["eval", str(out), "--backend", backend, "--metric", "sliced_wasserstein", "--weights", "model",
                 "--n", "300", "--json"]) == 0
    other = json.loads(capsys.readouterr().out)
    assert other["weights"] == "model" and other["sliced_wasserstein"] < other["sliced_wasserstein_of_noise"]


def test_image_grid_layout():
    images = np.linspace(-1, 1, 12 * 64).reshape(12, 1, 8, 8)
    grid = image_grid(images, columns=5)
    # 8x8 enlarged 4x to 32x32; 3 rows of 5 with 1-pixel gaps
    assert grid.shape == (3 * 33 + 1, 5 * 33 + 1, 3) and grid.dtype == np.uint8
    assert grid[1, 1].tolist() == [0, 0, 0]  # the first pixel of the first image: -1
    assert grid[0, 0].tolist() == grid[-2, -2].tolist() == [255, 255, 255]  # padding, and the empty last cells
    with pytest.raises(ValueError, match="expected images"):
        image_grid(np.zeros((2, 2, 8, 8)))
