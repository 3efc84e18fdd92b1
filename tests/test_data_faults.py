"""Faults in building and reading data (issue 19): a full disk, absurd labels, non-finite values and
symbolic links each end in one line naming the file, with nothing left behind."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from toolkit.cli import main
from toolkit.errors import ToolkitError
from toolkit.plugins.hdf5 import HDF5Options
from toolkit.plugins.hdf5.commands import build_file, split_indices
from toolkit.plugins.hdf5.dataset import HDF5Dataset
from toolkit.plugins.hdf5.format import DataError, Meta, write_file

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def images_npz(path, count=400):
    """uint8 images of 192 bytes each, 76.8 KB in all: several chunks of the file written."""
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 256, (count, 3, 8, 8), dtype=np.uint8), y=np.arange(count) % 4)
    return path


def disk_with(monkeypatch, free: int) -> None:
    """The file system holds ``free`` more bytes: a write stops short at the limit, the next fails
    with ENOSPC, as write(2) does when a disk fills."""
    real = os.pwrite
    left = [free]

    def pwrite(fd, data, offset):
        if left[0] == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = real(fd, memoryview(data)[:left[0]], offset)
        left[0] -= written
        return written

    monkeypatch.setattr(os, "pwrite", pwrite)


def no_partial_files(folder: Path) -> bool:
    return not [p.name for p in folder.iterdir() if p.name.endswith((".partial", ".h5"))]


# -- a full disk ------------------------------------------------------------------------------------


def test_a_full_disk_during_data_build_is_one_line_and_leaves_no_partial_file(tmp_path, capsys, monkeypatch):
    source = images_npz(tmp_path / "images.npz")
    out = tmp_path / "built" / "images.h5"
    out.parent.mkdir()
    disk_with(monkeypatch, free=20_000)
    with pytest.raises(ToolkitError) as error:
        build_file(str(source), out)
    assert error.value.__cause__.errno == errno.ENOSPC
    assert no_partial_files(out.parent)
    code, stdout, err = run_cli(capsys, "data", "build", source, "--out", out)
    assert (code, stdout) == (1, "")
    assert err == f"toolkit: error: {out}: cannot write (No space left on device); it needs about 0.1 MiB\n"
    assert no_partial_files(out.parent)


def test_a_failing_write_in_a_real_process_ends_cleanly(tmp_path):
    """The operating system refuses the writes (a file size limit: EFBIG, as ENOSPC is refused):
    HDF5 must never see the failure, or closing the file crashes the process (exit 139)."""
    source = images_npz(tmp_path / "images.npz")
    out = tmp_path / "built" / "images.h5"
    out.parent.mkdir()
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
        from toolkit.cli import main
        sys.exit(main(["data", "build", {str(source)!r}, "--out", {str(out)!r}]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (1, ""), done.stderr
    assert done.stderr == f"toolkit: error: {out}: cannot write (File too large)\n"
    assert no_partial_files(out.parent)


def test_a_full_disk_during_the_first_use_build_of_a_run(tmp_path, capsys, monkeypatch):
    data = tmp_path / "data" / "digits.h5"
    disk_with(monkeypatch, free=16_000)
    code, _, err = run_cli(capsys, "run", CONFIGS / "meanflow_digits.yaml", "--backend", "torch", "--no-progress",
                           "--out", tmp_path / "run", "--set", f"data.path={data}", "--set", "run.steps=3")
    assert code == 1
    assert err.splitlines()[-1] == (f"toolkit: error: {data}: cannot write (No space left on device); it needs "
                                    f"about 0.1 MiB")
    assert "Traceback" not in err
    assert no_partial_files(data.parent)


# -- labels that are not class indices --------------------------------------------------------------


@contextlib.contextmanager
def fails_instead_of_hanging(seconds=60):
    """Turns a hang (a loop over 10^12 classes) into a failure; the fixed code takes milliseconds."""
    def interrupt(signum, frame):
        raise AssertionError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("label, shown", [(10**12, "1000000000000"), (-1, "-1"), (1e30, "1e+30"),
                                          (float("nan"), "nan")])
def test_a_label_out_of_range_is_refused_naming_the_example(tmp_path, capsys, label, shown):
    y = np.arange(20, dtype=np.float64 if isinstance(label, float) else np.int64) % 3
    y[7] = label
    np.savez(tmp_path / "labelled.npz", x=np.zeros((20, 2), np.float32), y=y)
    with fails_instead_of_hanging():
        code, _, err = run_cli(capsys, "data", "build", tmp_path / "labelled.npz", "--out", tmp_path / "o.h5")
    assert code == 1
    assert err == (f"toolkit: error: {tmp_path / 'labelled.npz'} ('x'): label {shown} (example 7) is not a class "
                   f"index; expected labels in [0, 1000000): 0, 1, ... for the classes\n")
    assert no_partial_files(tmp_path)


def test_a_file_claiming_absurdly_many_classes_is_refused(tmp_path, capsys):
    path = tmp_path / "classes.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("x", data=np.zeros((10, 2), np.float32))
        handle.create_dataset("y", data=np.zeros(10, np.int64))
        meta = handle.create_group("meta")
        for key, value in (("format_version", 1), ("shape", np.asarray([2])), ("dtype", "float32"),
                           ("value_range", np.asarray([0.0, 1.0])), ("source", "a test"), ("num_classes", 10**12)):
            meta.attrs[key] = value
    code, stdout, err = run_cli(capsys, "data", "info", path)
    assert (code, stdout) == (1, "")
    assert err == (f"toolkit: error: {path}: meta num_classes is 1000000000000; expected 0 (unlabelled) or the "
                   f"number of classes, at most 1000000\n")


def test_sparse_labels_split_as_the_per_class_loop_did():
    """The split no longer visits every class up to the largest label; its result is unchanged."""
    def per_class_loop(count, labels, fraction, seed):  # the split as it was, for labels 0..max
        rng = np.random.default_rng([seed, 7])
        groups = [np.flatnonzero(labels == c) for c in range(int(labels.max()) + 1)]
        sizes = np.array([g.size for g in groups])
        exact = fraction * sizes
        takes = np.floor(exact).astype(np.int64)
        extra = int(round(fraction * count)) - int(takes.sum())
        if extra > 0:
            takes[np.argsort(-(exact - takes), kind="stable")[:extra]] += 1
        takes = np.minimum(takes, sizes)
        orders = [rng.permutation(g) for g in groups]
        train = np.concatenate([o[t:] for o, t in zip(orders, takes)])
        test = np.concatenate([o[:t] for o, t in zip(orders, takes)])
        return rng.permutation(train), rng.permutation(test)

    labels = np.random.default_rng(0).choice([0, 3, 4, 9, 40], 500)
    for fraction, seed in ((0.1, 0), (0.37, 5), (0.0, 1)):
        expected = per_class_loop(500, labels, fraction, seed)
        for ours, theirs in zip(split_indices(500, labels, fraction, seed), expected):
            np.testing.assert_array_equal(ours, theirs)


# -- values that are not finite ---------------------------------------------------------------------


def test_data_build_refuses_non_finite_values_naming_the_first_bad_example(tmp_path, capsys):
    x = np.ones((30, 2, 2), np.float32)
    x[12, 1, 0] = np.inf
    x[20, 0, 0] = np.nan
    np.savez(tmp_path / "values.npz", x=x)
    code, _, err = run_cli(capsys, "data", "build", tmp_path / "values.npz", "--out", tmp_path / "o.h5")
    assert code == 1
    assert err == (f"toolkit: error: {tmp_path / 'values.npz'} ('x'): example 12 holds NaN or infinite values; "
                   f"expected finite numbers (training on them diverges)\n")


def test_the_writer_checks_every_value_whatever_the_source(tmp_path):
    def read(indices):
        block = indices.astype(np.float32)[:, None]
        return np.where(block == 250, np.float32(np.nan), block)

    meta = Meta((1,), "float32", (0.0, 300.0), "a reader of latents")
    with pytest.raises(DataError) as error:
        write_file(tmp_path / "o.h5", meta, read, None, np.arange(300), np.arange(0))
    assert str(error.value) == ("a reader of latents: example 250 holds NaN or infinite values; expected finite "
                                "numbers (training on them diverges)")
    assert list(tmp_path.iterdir()) == []
    write_file(tmp_path / "o.h5", meta, lambda indices: indices.astype(np.float32)[:, None], None, np.arange(300),
               np.arange(0))
    with h5py.File(tmp_path / "o.h5") as handle:
        assert handle["meta"].attrs["finite"] == 1  # readers need not check again


def float_file(path, x, x_test=None):
    """A float file as another tool writes it: nothing records that its values were checked."""
    with h5py.File(path, "w") as handle:
        handle.create_dataset("x", data=x, chunks=(16, *x.shape[1:]))
        if x_test is not None:
            handle.create_dataset("x_test", data=x_test)
        meta = handle.create_group("meta")
        for key, value in (("format_version", 1), ("shape", np.asarray(x.shape[1:])), ("dtype", "float32"),
                           ("value_range", np.asarray([-1.0, 1.0])), ("source", "another tool"), ("num_classes", 0)):
            meta.attrs[key] = value
    return path


def test_data_info_reports_non_finite_values(tmp_path, capsys):
    x = np.zeros((64, 3), np.float32)
    good = float_file(tmp_path / "good.h5", x)
    code, stdout, _ = run_cli(capsys, "data", "info", good)
    assert code == 0 and "finite values:   yes (checked now)\n" in stdout
    x[37, 2] = np.nan
    code, stdout, err = run_cli(capsys, "data", "info", float_file(tmp_path / "nan.h5", x))
    assert (code, stdout) == (1, "")
    assert err == (f"toolkit: error: {tmp_path / 'nan.h5'}: 'x'[37] holds NaN or infinite values; expected finite "
                   f"numbers (training on them diverges)\n")
    test = np.zeros((8, 3), np.float32)
    test[5, 0] = -np.inf
    code, _, err = run_cli(capsys, "data", "info", float_file(tmp_path / "inf.h5", np.zeros((64, 3), np.float32), test))
    assert code == 1 and err.startswith(f"toolkit: error: {tmp_path / 'inf.h5'}: 'x_test'[5] holds NaN or infinite")
    np.save(tmp_path / "built.npy", np.ones((10, 3), np.float32))
    assert run_cli(capsys, "data", "build", tmp_path / "built.npy", "--out", tmp_path / "built.h5")[0] == 0
    code, stdout, _ = run_cli(capsys, "data", "info", tmp_path / "built.h5")
    assert code == 0 and "finite values:   yes (checked when written)\n" in stdout


def test_training_on_non_finite_values_fails_with_one_line_before_any_step(tmp_path, capsys):
    x = np.zeros((64, 1, 2, 2), np.float32)
    x[40, 0, 1, 1] = np.nan
    path = float_file(tmp_path / "nan.h5", x)
    dataset = HDF5Dataset(HDF5Options(path=str(path), holdout=8))
    with pytest.raises(DataError) as error:
        next(dataset.batches(56, seed=0))
    assert str(error.value) == (f"{path}: 'x'[40] holds NaN or infinite values; expected finite numbers (training "
                                f"on them diverges)")
    code, _, err = run_cli(capsys, "run", CONFIGS / "meanflow_digits.yaml", "--backend", "torch", "--no-progress",
                           "--out", tmp_path / "run", "--set", f"data.path={path}", "--set", "data.source=null",
                           "--set", "data.holdout=8", "--set", "run.steps=3", "--set", "run.batch_size=56",
                           "--set", "eval.metric=null")
    assert code == 1
    assert err.splitlines()[-1] == (f"toolkit: error: {path}: 'x'[40] holds NaN or infinite values; expected "
                                    f"finite numbers (training on them diverges)")
    assert "diverged" not in err and "Traceback" not in err


# -- symbolic links -------------------------------------------------------------------------------


def pets(root, classes=("cat", "dog"), per_class=3):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_a_class_folder_linked_to_another_is_refused_naming_both(tmp_path, capsys):
    folder = pets(tmp_path / "pets", classes=("cat",))
    (folder / "dog").symlink_to(folder / "cat", target_is_directory=True)
    code, _, err = run_cli(capsys, "data", "build", folder, "--out", tmp_path / "pets.h5")
    assert code == 1
    assert err == (f"toolkit: error: {folder}: class folder 'cat' is the same folder as class folder 'dog' "
                   f"({folder / 'cat'} is {folder / 'cat'}, {folder / 'dog'} is {folder / 'cat'}: a symbolic "
                   f"link?); expected each class in a folder of its own\n")
    (folder / "dog").unlink()
    (folder / "kittens").symlink_to(folder / "cat" / "young", target_is_directory=True)
    pets(folder / "cat" / "young", classes=("small",))
    code, _, err = run_cli(capsys, "data", "build", folder, "--out", tmp_path / "pets.h5")
    assert code == 1 and err.startswith(f"toolkit: error: {folder}: class folder 'cat' holds class folder 'kittens' (")
    (folder / "kittens").unlink()
    (folder / "all").symlink_to(folder, target_is_directory=True)
    code, _, err = run_cli(capsys, "data", "build", folder, "--out", tmp_path / "pets.h5")
    assert code == 1 and err.startswith(f"toolkit: error: {folder / 'all'}: class folder 'all' is {folder} (a "
                                        f"symbolic link?), which holds {folder} itself")
    assert no_partial_files(tmp_path)


def test_an_image_linked_or_hard_linked_twice_is_refused_naming_both(tmp_path, capsys):
    folder = pets(tmp_path / "pets")
    (folder / "dog" / "copy.png").symlink_to(folder / "cat" / "1.png")
    code, _, err = run_cli(capsys, "data", "build", folder, "--out", tmp_path / "pets.h5")
    assert code == 1
    assert err == (f"toolkit: error: {folder / 'dog' / 'copy.png'}: is the same file as {folder / 'cat' / '1.png'} "
                   f"(a symbolic or hard link); expected each image once\n")
    (folder / "dog" / "copy.png").unlink()
    os.link(folder / "cat" / "2.png", folder / "cat" / "again.png")
    code, _, err = run_cli(capsys, "data", "build", folder, "--out", tmp_path / "pets.h5")
    assert code == 1 and err.startswith(f"toolkit: error: {folder / 'cat' / 'again.png'}: is the same file as "
                                        f"{folder / 'cat' / '2.png'} ")
    (folder / "cat" / "again.png").unlink()
    assert run_cli(capsys, "data", "build", folder, "--out", tmp_path / "pets.h5")[0] == 0
