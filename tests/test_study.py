"""`toolkit study`: a shipped study end to end at test length in each backend (the table, the
pictures, finite numbers), resuming a killed study, failures and bad study files."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from tests_paths import CONFIGS, REPO
from toolkit.cli import main

STUDIES = CONFIGS / "studies"
#: the shipped study at test length: two variants x two seeds, 40 steps, measured every 20
TINY = ["--set", "run.steps=40", "--set", "eval.every=20", "--set", "eval.num_samples=100",
        "--set", "logging.every=10", "--set", "checkpoint.every=20", "--seeds", "0,1", "--no-progress"]


@pytest.fixture(scope="module")
def digits_file(tmp_path_factory):
    return tmp_path_factory.mktemp("data") / "digits.h5"


def _png_shape(path):
    import matplotlib.image

    return matplotlib.image.imread(str(path)).shape


def test_shipped_study_end_to_end(backend, tmp_path, digits_file, capsys):
    out = tmp_path / "study"
    argv = ["study", str(STUDIES / "meanflow_vs_fm.yaml"), "--backend", backend, "--out", str(out),
            "--set", f"data.path={digits_file}", *TINY]
    assert main(argv) == 0
    printed = capsys.readouterr().out.split()
    for name in ("results.csv", "results.md", "summary.json", "curves.png", "nfe.png", "samples.png"):
        assert str(out / name) in printed
    for name in ("curves.png", "nfe.png", "samples.png"):
        height, width, channels = _png_shape(out / name)
        assert height > 200 and width > 300 and channels in (3, 4)

    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["variant"], r["seed"], r["status"]) for r in rows] == [
        ("meanflow", "0", "finished"), ("meanflow", "1", "finished"),
        ("flow_matching", "0", "finished"), ("flow_matching", "1", "finished")]
    for row in rows:
        nfes = (1, 2, 4) if row["variant"] == "meanflow" else (1, 2, 4, 8, 16, 32, 64)
        for nfe in nfes:
            value = float(row[f"classifier_fd_{nfe}nfe"])
            # a trained-for-40-steps model: finite, better than the noise itself, not better than data
            assert float(row["classifier_fd_of_training_data"]) < value < float(row["classifier_fd_of_noise"])
        assert float(row["seconds_per_step"]) > 0
        metrics = json.loads((out / row["variant"] / f"seed{row['seed']}" / "metrics.json").read_text())
        assert metrics["classifier_fd_1nfe"] == metrics["classifier_fd"]  # the sampler's NFE is 1
        assert metrics["classifier_fd"] == pytest.approx(float(row["classifier_fd_1nfe"]), rel=1e-12)
    # the two seeds are different runs
    assert rows[0]["classifier_fd_1nfe"] != rows[1]["classifier_fd_1nfe"]

    summary = json.loads((out / "summary.json").read_text())
    groups = {g["variant"]: g for g in summary["groups"]}
    assert groups["meanflow"]["seeds"] == 2 and set(groups["flow_matching"]["metric"]) == {
        "1", "2", "4", "8", "16", "32", "64"}
    values = [float(r["classifier_fd_2nfe"]) for r in rows if r["variant"] == "meanflow"]
    spread = groups["meanflow"]["metric"]["2"]
    assert spread["mean"] == pytest.approx(np.mean(values)) and spread["std"] == pytest.approx(np.std(values, ddof=1))
    assert math.isfinite(groups["flow_matching"]["seconds_per_step"]["mean"])

    table = (out / "results.md").read_text()
    assert "| meanflow | 2/2 |" in table and "| flow_matching | 2/2 |" in table
    assert f"{spread['mean']:.3g} ± {spread['std']:.2g}" in table
    assert "![curves](curves.png)" in table and "toolkit study" in table

    # the curve during training: measured at 20 and at the end, in the TensorBoard events
    from toolkit.events import read_scalars

    curve = read_scalars(out / "meanflow" / "seed0")["eval/classifier_fd_4nfe"]
    assert [step for step, _ in curve] == [20, 40] and all(math.isfinite(v) for _, v in curve)

    # a second invocation trains nothing and reports the same numbers
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/metrics.json")}
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/metrics.json")} == before
    assert json.loads((out / "summary.json").read_text())["groups"] == summary["groups"]


def _study_file(tmp_path, digits_file, **changes):
    study = {"name": "tiny", "config": str(CONFIGS / "meanflow_digits.yaml"),
             "set": {"data.path": str(digits_file), "eval.num_samples": 100, "eval.every": 10, "logging.every": 5,
                     "checkpoint.every": 10, "model.hidden": 64, "logging.samples_every": None},
             "variants": {"baseline": {}, "curriculum": {"schedule": {"name": "meanflow_curriculum"}}},
             "seeds": [0], "steps": [20], "reference": "baseline", **changes}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_lengths_reference_and_a_failing_cell(tmp_path, digits_file, capsys):
    """Two training lengths (folders per length, a steps column), the steps at which each variant
    reaches the reference's final quality, and a cell that fails at run time while the rest runs."""
    variants = {"baseline": {}, "curriculum": {"schedule": {"name": "meanflow_curriculum"}},
                # the schedule needs pairs with r < t: this cell fails inside training
                "broken": {"objective.ratio": 0.0, "schedule": {"name": "meanflow_curriculum"}}}
    path = _study_file(tmp_path, digits_file, variants=variants, steps=[10, 20])
    out = tmp_path / "out"
    assert main(["study", str(path), "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "2 of 6 cells failed, first: broken (10 steps, seed 0): UsageError" in err and "needs pairs with r < t" in err
    assert (out / "broken" / "10steps" / "seed0" / "failed.txt").is_file()
    for variant in ("baseline", "curriculum"):
        for steps in (10, 20):
            assert (out / variant / f"{steps}steps" / "seed0" / "metrics.json").is_file()
    summary = {(g["variant"], g["steps"]): g for g in json.loads((out / "summary.json").read_text())["groups"]}
    assert summary[("broken", 10)]["seeds"] == 0 and summary[("baseline", 20)]["seeds"] == 1
    with open(out / "results.csv") as handle:
        rows = {(r["variant"], r["steps"]): r for r in csv.DictReader(handle)}
    # "steps to reach": the first measured step whose value is at least as good as the reference's final
    # one, or within the tolerance of it (a study-level setting: the report changes, the cells do not)
    from toolkit.events import read_scalars

    for tolerance in (0.0, 0.5):
        if tolerance:
            path.write_text(path.read_text() + f"tolerance: {tolerance}\n")
            assert main(["study", str(path), "--out", str(out), "--report-only"]) == 0
            summary = {(g["variant"], g["steps"]): g for g in json.loads((out / "summary.json").read_text())["groups"]}
        for (variant, steps), group in summary.items():
            if variant == "broken":
                assert group["reached_at"] is None
                continue
            target = float(rows[("baseline", str(steps))]["classifier_fd_1nfe"])
            curve = read_scalars(out / variant / f"{steps}steps" / "seed0")["eval/classifier_fd_1nfe"]
            expected = next((step for step, value in curve if value <= target * (1 + tolerance) * (1 + 1e-6)), None)
            assert group["reached_at"] == expected
    # the reference reaches its own final value by its end at the latest (the curve ends at full precision)
    assert summary[("baseline", 10)]["reached_at"] == 10 and summary[("baseline", 20)]["reached_at"] is not None
    table = (out / "results.md").read_text()
    assert "| variant | steps | seeds |" in table and "steps to reach baseline's final classifier_fd" in table
    assert "Failed cells:" in table and "needs pairs with r < t" in table


def test_killed_study_resumes(tmp_path, digits_file):
    """A study killed inside its second cell: the first is not trained again, the second resumes
    from its checkpoint, and the numbers equal an uninterrupted study's."""
    path = _study_file(tmp_path, digits_file, steps=[60], **{"set": {
        "data.path": str(digits_file), "eval.num_samples": 100, "eval.every": 20, "eval.nfe": [1, 4], "logging.every": 5,
        "checkpoint.every": 10, "model.hidden": 64, "logging.samples_every": None}})
    command = [sys.executable, "-m", "toolkit.cli", "study", str(path)]  # not a terminal: a line per cell
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    whole = subprocess.run([*command, "--out", str(tmp_path / "whole")], capture_output=True, text=True, env=env,
                           cwd=REPO)
    assert whole.returncode == 0, whole.stderr

    killed_out = tmp_path / "killed"
    second = killed_out / "curriculum" / "60steps" / "seed0" / "checkpoints"
    process = subprocess.Popen([*command, "--out", str(killed_out)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=env, cwd=REPO)
    deadline = time.monotonic() + 300
    while not list(second.glob("step_*.safetensors")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert list(second.glob("step_*.safetensors")) and not (second.parent / "metrics.json").exists()
    first = killed_out / "baseline" / "60steps" / "seed0" / "metrics.json"
    stamp = first.stat().st_mtime_ns

    resumed = subprocess.run([*command, "--out", str(killed_out)], capture_output=True, text=True, env=env, cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr
    assert "curriculum (60 steps, seed 0): training, resuming at step" in resumed.stderr
    assert "baseline (60 steps, seed 0): training" not in resumed.stderr
    assert first.stat().st_mtime_ns == stamp
    for variant in ("baseline", "curriculum"):
        a, b = (json.loads((root / variant / "60steps" / "seed0" / "metrics.json").read_text())
                for root in (tmp_path / "whole", killed_out))
        assert a["classifier_fd_1nfe"] == b["classifier_fd_1nfe"] and a["classifier_fd_4nfe"] == b["classifier_fd_4nfe"]


def test_changed_study_is_not_mixed(tmp_path, digits_file, capsys):
    path = _study_file(tmp_path, digits_file, steps=[10], variants={"baseline": {}})
    out = ["--out", str(tmp_path / "out"), "--no-progress"]
    assert main(["study", str(path), *out]) == 0
    assert main(["study", str(path), *out, "--set", "optimizer.lr=0.01"]) == 2
    err = capsys.readouterr().err
    assert "1 cell(s) of this study were run with another config" in err
    assert "(optimizer.lr: 0.001 there, 0.01 now); pass --rerun-changed" in err
    assert main(["study", str(path), *out, "--set", "optimizer.lr=0.01", "--rerun-changed"]) == 0
    stored = json.loads((tmp_path / "out" / "baseline" / "10steps" / "seed0" / "run.json").read_text())
    assert stored["config"]["optimizer"]["lr"] == 0.01
    # the report alone, rebuilt from the cells on disk; a new seed is listed as not run, not trained
    metrics = tmp_path / "out" / "baseline" / "10steps" / "seed0" / "metrics.json"
    stamp = metrics.stat().st_mtime_ns
    (tmp_path / "out" / "results.md").unlink()
    assert main(["study", str(path), *out, "--set", "optimizer.lr=0.01", "--seeds", "0,1", "--report-only"]) == 0
    assert "| baseline | 1/2 |" in (tmp_path / "out" / "results.md").read_text()
    assert metrics.stat().st_mtime_ns == stamp and not (tmp_path / "out" / "baseline" / "10steps" / "seed1").exists()


@pytest.mark.parametrize("changes, message", [
    ({"seeds": []}, "study.yaml: seeds: got (), expected one or more seeds >= 0"),
    ({"reference": "nope"}, "study.yaml: reference: got 'nope', expected one of the variants: baseline, curriculum"),
    ({"variants": {"a b": {}}, "reference": None}, "study.yaml: variants.a b: got 'a b', expected a name of letters"),
    ({"variants": {"x": {"objective.ratio": 2.0}}, "reference": None}, "study.yaml: variants.x: objective.ratio: got 2.0, "
                                                    "expected a value in [0, 1]"),
    ({"set": {"objective.ratoi": 0.5}}, "study.yaml: set: objective.ratoi: unknown key (did you "
                                        "mean 'ratio'?)"),
    ({"config": "missing.yaml"}, "study.yaml: config: 'missing.yaml' is not a file"),
    ({"colour": "red"}, "study.yaml: colour: unknown key"),
])
def test_bad_study_files_name_the_file_and_key(tmp_path, digits_file, capsys, changes, message):
    path = _study_file(tmp_path, digits_file, **changes)
    assert main(["study", str(path), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing ran


@pytest.mark.parametrize("study", sorted(p.name for p in STUDIES.glob("*.yaml")))
def test_every_shipped_study_validates(backend, study):
    """Each cell's config of each shipped study, in each backend, before anything trains."""
    from toolkit.registry import get_registry
    from toolkit.study import load_study, study_cells

    registry = get_registry()
    spec = load_study(STUDIES / study, registry)
    cells = study_cells(spec, STUDIES / study, backend, registry, REPO / "runs" / "unused")
    assert len(cells) == len(spec.variants) * len(spec.seeds) * max(1, len(spec.steps)) and len(spec.seeds) >= 3
    assert {c.config.eval.metric.name for c in cells} == {"classifier_fd"}
    assert all({1, 2, 4} <= set(c.config.eval.nfe) for c in cells)


def test_a_study_extends_another(tmp_path, digits_file):
    """Inherited keys, the parent's config path resolved from the parent's folder, and the keys
    the child gives replacing the parent's whole."""
    from toolkit.registry import get_registry
    from toolkit.study import load_study, study_cells

    registry = get_registry()
    parent = _study_file(tmp_path, digits_file, config="../meanflow_digits.yaml")  # as shipped: relative
    (tmp_path / "meanflow_digits.yaml").write_text((CONFIGS / "meanflow_digits.yaml").read_text())
    (tmp_path / "parent").mkdir()
    parent = parent.rename(tmp_path / "parent" / "study.yaml")
    child = tmp_path / "elsewhere" / "deeper" / "child.yaml"
    child.parent.mkdir(parents=True)
    child.write_text(yaml.safe_dump({"extends": "../../parent/study.yaml", "name": "child", "seeds": [3, 4],
                                     "set": {"data.path": str(digits_file), "model.hidden": 32}}))
    spec = load_study(child, registry)
    assert (spec.name, spec.seeds, spec.reference, list(spec.variants)) == ("child", (3, 4), "baseline",
                                                                           ["baseline", "curriculum"])
    assert (child.parent / spec.config).resolve() == (tmp_path / "meanflow_digits.yaml").resolve()
    cells = study_cells(spec, child, "torch", registry, tmp_path / "out")
    assert [(c.variant, c.seed) for c in cells] == [("baseline", 3), ("baseline", 4), ("curriculum", 3),
                                                    ("curriculum", 4)]
    # the child's set replaced the parent's whole: the parent's eval.every is not inherited
    assert {c.config.model.options.hidden for c in cells} == {32} and {c.config.eval.every for c in cells} == {None}


@pytest.mark.parametrize("extends, message", [
    ("missing.yaml", "child.yaml: extends: 'missing.yaml' is not a file"),
    ("child.yaml", "child.yaml: extends: studies extend each other in a circle"),
    (7, "child.yaml: extends: got 7, expected the path of a study file"),
])
def test_bad_extends_names_the_file_and_key(tmp_path, capsys, extends, message):
    (tmp_path / "child.yaml").write_text(yaml.safe_dump({"extends": extends, "name": "child"}))
    assert main(["study", str(tmp_path / "child.yaml"), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_studies_extending_in_a_circle_name_the_chain(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nname: b\n")
    assert main(["study", str(tmp_path / "a.yaml")]) == 2
    err = capsys.readouterr().err
    assert "b.yaml: extends: studies extend each other in a circle: " in err and err.count("a.yaml") >= 2


def test_unknown_variant_and_seeds_options(tmp_path, digits_file, capsys):
    path = _study_file(tmp_path, digits_file)
    assert main(["study", str(path), "--variants", "baseline,nope"]) == 2
    assert "--variants: nope not in" in capsys.readouterr().err
    assert main(["study", str(path), "--seeds", "0,x"]) == 2
    assert "expected seeds like 0,1,2" in capsys.readouterr().err


def test_event_reader_drops_what_a_resumed_run_replaced(tmp_path):
    from toolkit.events import EventLog, read_scalars

    first = EventLog(tmp_path)
    for step in (10, 20, 30):
        first.scalars({"loss": step}, step)
    first.close()
    time.sleep(1.1)  # event file names carry the second they were begun
    second = EventLog(tmp_path, purge_step=21)  # resumed from the checkpoint at step 20
    second.scalars({"loss": 300.0}, 30)
    second.close()
    assert read_scalars(tmp_path) == {"loss": [(10, 10.0), (20, 20.0), (30, 300.0)]}
