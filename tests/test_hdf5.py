"""The ``hdf5`` dataset: the file format's checks, normalisation, the seeded block shuffle (pure in
the batch number, every example once per epoch), streaming with bounded reads, and configs."""

from __future__ import annotations

import json
import pickle

import h5py
import numpy as np
import pytest

from toolkit.cli import main
from toolkit.config import config_from_dict
from toolkit.errors import ConfigError, ToolkitError
from toolkit.plugins.hdf5 import HDF5Options
from toolkit.plugins.hdf5.dataset import SHUFFLE_BLOCKS, HDF5Dataset
from toolkit.registry import get_registry

REST = {"model": {"name": "mlp"}, "objective": {"name": "flow_matching"}, "sampler": {"name": "euler"}}


def write_h5(path, x, y=None, *, chunk=None, num_classes=None, value_range=(0, 255), x_test=None, y_test=None,
             meta_shape=None, extra_meta=None):
    """A file in the documented layout, written by hand (as another tool would), with any chunking."""
    x = np.asarray(x)
    with h5py.File(path, "w") as handle:
        rows = chunk or min(len(x), 256)
        handle.create_dataset("x", data=x, chunks=(rows, *x.shape[1:]) if rows else None)
        if y is not None:
            handle.create_dataset("y", data=np.asarray(y))
        if x_test is not None:
            handle.create_dataset("x_test", data=x_test)
        if y_test is not None:
            handle.create_dataset("y_test", data=y_test)
        meta = handle.create_group("meta")
        meta.attrs["format_version"] = 1
        meta.attrs["shape"] = np.asarray(meta_shape if meta_shape is not None else x.shape[1:], dtype=np.int64)
        meta.attrs["dtype"] = str(x.dtype)
        meta.attrs["value_range"] = np.asarray(value_range, dtype=np.float64)
        meta.attrs["source"] = "written by a test"
        meta.attrs["num_classes"] = num_classes if num_classes is not None else (
            0 if y is None else int(np.max(y)) + 1)
        for key, value in (extra_meta or {}).items():
            meta.attrs[key] = value
    return path


def open_dataset(path, **options) -> HDF5Dataset:
    return get_registry().load("dataset", "hdf5", "torch")(HDF5Options(path=str(path), **options))


def take(dataset, batch_size, seed, count, start=0):
    stream = dataset.batches(batch_size, seed, start=start)
    return [next(stream) for _ in range(count)]


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (300, 3, 4, 4), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(300) % 256  # examples are unique (row r is told by x[r, 0, 0, :2])
    x[:, 0, 0, 1] = np.arange(300) // 256
    y = rng.integers(0, 5, 300)
    return x, y


def key(example) -> bytes:
    return np.asarray(example).tobytes()


def test_registered_for_every_backend_and_listed():
    registry = get_registry()
    component = registry.get("dataset", "hdf5")
    assert registry.backends_of(component) == ["jax", "torch"]
    assert component.summary.startswith("An HDF5 file written by `toolkit data build`")


def test_npz_round_trip_keeps_examples_and_labels(tmp_path, capsys, arrays):
    x, y = arrays
    np.savez(tmp_path / "data.npz", x=x, y=y)
    assert main(["data", "build", str(tmp_path / "data.npz"), "--out", str(tmp_path / "data.h5"),
                 "--test-fraction", "0.2"]) == 0
    capsys.readouterr()
    dataset = open_dataset(tmp_path / "data.h5")
    assert dataset.spec.shape == (3, 4, 4) and dataset.spec.num_classes == 5
    assert (dataset.num_train, dataset.held_out[2]) == (240, 60)
    originals = {key(example): label for example, label in zip(x, y)}
    seen = []
    for batch in take(dataset, 48, seed=3, count=5):  # exactly one epoch
        assert batch.x.dtype == np.float32 and batch.y.dtype == np.int64
        assert batch.x.min() >= -1 and batch.x.max() <= 1
        stored = np.rint((batch.x + 1) / 2 * 255).astype(np.uint8)
        np.testing.assert_allclose(batch.x, stored / 255.0 * 2 - 1, atol=1e-6)  # [0, 255] -> [-1, 1]
        seen += [(key(e), int(label)) for e, label in zip(stored, batch.y)]
    test = dataset.reference(60, seed=0)
    held = np.rint((test.x + 1) / 2 * 255).astype(np.uint8)
    seen += [(key(e), int(label)) for e, label in zip(held, test.y)]
    assert len(seen) == 300 and dict(seen) == originals  # every example once, with its own label
    raw = open_dataset(tmp_path / "data.h5", normalize=False)
    assert raw.reference(5, 0).x.max() > 1 and np.array_equal(raw.reference(5, 0).x, np.rint(raw.reference(5, 0).x))


def test_float_arrays_normalise_their_stored_range(tmp_path, capsys):
    latents = np.random.default_rng(1).normal(2.0, 3.0, (100, 4, 2, 2)).astype(np.float32)
    np.save(tmp_path / "latents.npy", latents)
    assert main(["data", "build", str(tmp_path / "latents.npy"), "--out", str(tmp_path / "l.h5"),
                 "--test-fraction", "0"]) == 0
    capsys.readouterr()
    with h5py.File(tmp_path / "l.h5") as handle:
        assert handle["x"].dtype == np.float32 and "x_test" not in handle and "y" not in handle
        np.testing.assert_allclose(handle["meta"].attrs["value_range"], [latents.min(), latents.max()])
    dataset = open_dataset(tmp_path / "l.h5", holdout=10)
    assert dataset.spec.num_classes == 0 and dataset.num_train == 90
    epoch = np.concatenate([b.x for b in take(dataset, 30, 0, 3)])
    assert epoch.min() >= -1 and epoch.max() <= 1 and take(dataset, 30, 0, 1)[0].y is None
    raw = open_dataset(tmp_path / "l.h5", holdout=10, normalize=False).reference(10, 0).x
    assert raw.dtype == np.float32 and {key(e) for e in raw} <= {key(e) for e in latents}  # stored values


def test_default_holdout_is_a_tenth_capped(tmp_path):
    x = np.zeros((50, 2), np.float32)
    x[:, 0] = np.arange(50)
    dataset = open_dataset(write_h5(tmp_path / "a.h5", x, value_range=(0, 49)), normalize=False)
    assert (dataset.num_train, dataset.held_out[1:]) == (45, (45, 5))
    values = dataset.reference(12, seed=0).x[:, 0].astype(int)  # more than held out: cycles evenly
    assert sorted(values[:5]) == [45, 46, 47, 48, 49]
    assert set(np.bincount(values)[45:].tolist()) == {2, 3} and values.min() == 45
    assert not np.array_equal(values, dataset.reference(12, seed=1).x[:, 0].astype(int))


def many_chunks(tmp_path, n=1000, chunk=16, labelled=True):
    x = np.arange(n, dtype=np.float32)[:, None].repeat(2, axis=1)  # example r holds r: rows are traceable
    y = np.arange(n) % 7 if labelled else None
    return write_h5(tmp_path / "many.h5", x, y, chunk=chunk, value_range=(0, n - 1))


def stream(dataset, batch_size, seed, count, start=0):
    return [np.rint(b.x[:, 0]).astype(int) for b in take(dataset, batch_size, seed, count, start)]


def test_stream_is_a_pure_function_of_seed_batch_size_and_index(tmp_path):
    dataset = open_dataset(many_chunks(tmp_path), normalize=False, holdout=13)
    assert dataset.num_train == 987 and dataset.num_blocks == 62  # a partial last block
    first = stream(dataset, 50, seed=5, count=45)  # ~2.3 epochs: batches straddle epoch boundaries
    again = stream(open_dataset(dataset.options.path, normalize=False, holdout=13), 50, 5, 45)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    resumed = stream(dataset, 50, seed=5, count=20, start=25)
    assert all(np.array_equal(a, b) for a, b in zip(first[25:], resumed))
    other = stream(dataset, 50, seed=6, count=20)
    assert not np.array_equal(np.concatenate(first[:20]), np.concatenate(other))
    rows = np.concatenate(first)
    for epoch in range(2):  # each epoch visits every training example exactly once
        assert sorted(rows[epoch * 987:(epoch + 1) * 987].tolist()) == list(range(987))
    assert not np.array_equal(rows[:987], rows[987:1974])  # and each epoch in a new order
    assert not np.array_equal(rows[:987], np.arange(987))
    labels = np.concatenate([b.y for b in take(dataset, 50, 5, 3)])
    assert np.array_equal(labels, rows[:150] % 7)  # labels travel with their examples
    # The stream of examples does not depend on the batch size or the cache, only the grouping.
    assert np.array_equal(np.concatenate(stream(dataset, 7, 5, 30)), rows[:210])
    small = open_dataset(dataset.options.path, normalize=False, holdout=13, cache_chunks=1)
    assert np.array_equal(np.concatenate(stream(small, 50, 5, 45)), rows)


def test_horizontal_flips_are_drawn_per_step_and_resume_with_the_stream(tmp_path, arrays):
    x, y = arrays
    path = write_h5(tmp_path / "images.h5", x, y)
    plain, flipped = (take(open_dataset(path, horizontal_flip=f), 30, 2, 6) for f in (False, True))
    mirrored = [np.array_equal(f, p[..., ::-1]) for a, b in zip(plain, flipped) for p, f in zip(a.x, b.x)]
    kept = [np.array_equal(f, p) for a, b in zip(plain, flipped) for p, f in zip(a.x, b.x)]
    assert all(m or k for m, k in zip(mirrored, kept))  # each image as stored or mirrored left to right
    assert 60 < sum(mirrored) < 120  # about half of 180
    assert all(np.array_equal(a.y, b.y) for a, b in zip(plain, flipped))
    resumed = take(open_dataset(path, horizontal_flip=True), 30, 2, 2, start=4)
    assert all(np.array_equal(a.x, b.x) for a, b in zip(flipped[4:], resumed))
    assert "horizontal_flip" in error_of(many_chunks(tmp_path), horizontal_flip=True)  # 2-D points: no


def test_num_classes_0_trains_unconditionally_on_a_labelled_file(tmp_path, arrays):
    x, y = arrays
    path = write_h5(tmp_path / "images.h5", x, y)
    labelled, unlabelled = open_dataset(path), open_dataset(path, num_classes=0)
    assert labelled.spec.num_classes == 5 and unlabelled.spec.num_classes == 0
    batch, plain = take(unlabelled, 16, 0, 1)[0], take(labelled, 16, 0, 1)[0]
    assert batch.y is None and np.array_equal(batch.x, plain.x)
    assert unlabelled.reference(8, 0).y is None
    assert "expects 4" in error_of(path, num_classes=4)


def test_a_batch_larger_than_the_data_spans_epochs(tmp_path):
    dataset = open_dataset(many_chunks(tmp_path, n=21, chunk=4), normalize=False, holdout=1)
    rows = np.concatenate(stream(dataset, 50, seed=0, count=2))  # five epochs of 20
    assert all(sorted(rows[e * 20:(e + 1) * 20].tolist()) == list(range(20)) for e in range(5))
    assert np.array_equal(rows[50:], stream(dataset, 50, seed=0, count=1, start=1)[0])
    assert dataset.reference(0, seed=0).x.shape == (0, 2)


def test_shuffle_mixes_within_windows_of_a_few_blocks(tmp_path):
    dataset = open_dataset(many_chunks(tmp_path, n=640, chunk=16), normalize=False, holdout=1)
    rows = np.concatenate(stream(dataset, 64, seed=0, count=1))
    blocks = np.unique(rows // 16)
    assert len(blocks) == SHUFFLE_BLOCKS  # the first 64 come from one window of 4 shuffled blocks
    assert not np.array_equal(np.sort(rows), rows)


def test_reads_are_streamed_chunk_by_chunk_with_a_bounded_cache(tmp_path, monkeypatch):
    path = many_chunks(tmp_path, n=2048, chunk=32)
    reads = []
    original = h5py.Dataset.__getitem__

    def counting(self, selection):
        result = original(self, selection)
        if self.name in ("/x", "/x_test"):
            reads.append(result.shape[0])
        return result

    monkeypatch.setattr(h5py.Dataset, "__getitem__", counting)
    for cache in (8, 2):
        reads.clear()
        dataset = open_dataset(path, cache_chunks=cache, holdout=48)
        assert dataset.num_blocks == 63 and reads == []  # opening checks the layout, reads no examples
        batches = dataset.batches(40, seed=1)
        for _ in range(2 * 2000 // 40):  # two epochs
            next(batches)
            assert len(dataset._cache) <= cache
        assert max(reads) <= 32  # never more than one chunk at a time
        if cache == 8:
            assert len(reads) <= 2 * 63 and sum(reads) <= 2 * 2000  # each chunk once per epoch
        else:
            assert len(reads) > 2 * 63  # a cache smaller than the window re-reads, still chunk by chunk
        reads.clear()
        dataset.reference(48, seed=0)
        assert max(reads) <= 32 and len(reads) <= 3


def test_handles_open_lazily_pickle_without_them_and_reopen(tmp_path):
    dataset = open_dataset(many_chunks(tmp_path), normalize=False)
    assert dataset._file is None
    expected = stream(dataset, 30, 2, 3, start=4)
    assert dataset._file is not None
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy._file is None and len(copy._cache) == 0
    assert all(np.array_equal(a, b) for a, b in zip(stream(copy, 30, 2, 3, start=4), expected))
    dataset.close()
    assert dataset._file is None
    with dataset:
        assert all(np.array_equal(a, b) for a, b in zip(stream(dataset, 30, 2, 3, start=4), expected))
    assert dataset._file is None


def test_reference_comes_from_x_test_when_present(tmp_path):
    x = np.zeros((40, 2), np.uint8)
    x_test = np.full((10, 2), 200, np.uint8)
    path = write_h5(tmp_path / "t.h5", x, np.zeros(40, np.int64), num_classes=3, x_test=x_test,
                    y_test=np.full(10, 2))
    dataset = open_dataset(path, normalize=False)
    assert dataset.num_train == 40
    reference = dataset.reference(10, seed=1)
    assert np.all(reference.x == 200) and np.all(reference.y == 2)
    with pytest.raises(ToolkitError, match=r"has a held-out set 'x_test' \(10 examples\), so data.holdout=5 does "
                                           r"not apply"):
        open_dataset(path, holdout=5)


# -- a damaged or malformed file: each error names the file, the problem and what was expected ----------


def error_of(path, **options) -> str:
    with pytest.raises(ToolkitError) as error:
        open_dataset(path, **options)
    message = str(error.value)
    assert message.startswith(f"{path}: "), message
    return message[len(str(path)) + 2:]


def test_not_hdf5_and_truncated_files(tmp_path):
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    assert error_of(garbage).startswith("not an HDF5 file (no HDF5 signature in its first bytes)")
    path = many_chunks(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    assert error_of(path).startswith(f"truncated HDF5 file: it has {len(data) // 2} bytes, fewer than its "
                                     f"header declares")
    assert error_of(tmp_path / "absent.h5") == "no such file; expected an HDF5 file written by `toolkit data build`"


def test_layout_errors(tmp_path):
    x = np.zeros((20, 1, 2, 2), np.uint8)
    with h5py.File(tmp_path / "nox.h5", "w") as handle:
        handle.create_dataset("images", data=x)
    assert error_of(tmp_path / "nox.h5").startswith("no dataset 'x' (found: images); expected the examples as 'x'")
    assert error_of(write_h5(tmp_path / "len.h5", x, np.zeros(19, np.int64), num_classes=2)) == (
        "'y' has shape (19,) but 'x' has 20 examples; expected one label per example: shape (20,)")
    assert error_of(write_h5(tmp_path / "float.h5", x, np.zeros(20, np.float32), num_classes=2)) == (
        "'y' has dtype float32; expected integer class labels (int64)")
    labels = np.zeros(20, np.int64)
    labels[7] = 3
    assert error_of(write_h5(tmp_path / "range.h5", x, labels, num_classes=3)) == (
        "'y'[7] is 3, outside [0, 3) (meta num_classes = 3); expected labels in [0, num_classes)")
    labels[7] = -1
    assert "'y'[7] is -1, outside [0, 3)" in error_of(write_h5(tmp_path / "neg.h5", x, labels, num_classes=3))
    assert error_of(write_h5(tmp_path / "shape.h5", x, meta_shape=(1, 4, 4))) == (
        "meta shape (1, 4, 4) disagrees with 'x' of shape (20, 1, 2, 2); expected meta shape = x.shape[1:] = "
        "(1, 2, 2)")
    assert error_of(write_h5(tmp_path / "empty.h5", np.zeros((0, 1, 2, 2), np.uint8))) == (
        "holds no examples ('x' has shape (0, 1, 2, 2)); expected at least one")
    assert error_of(write_h5(tmp_path / "nolabels.h5", x, num_classes=4)).startswith(
        "meta num_classes is 4 but there are no labels 'y'")
    assert error_of(write_h5(tmp_path / "names.h5", x, np.zeros(20, np.int64), num_classes=2,
                             extra_meta={"class_names": json.dumps(["a"])})) == (
        "meta class_names is '[\"a\"]'; expected a JSON list of 2 strings")
    assert error_of(write_h5(tmp_path / "version.h5", x, extra_meta={"format_version": 2})) == (
        "meta format_version is 2 (written by a newer toolkit; upgrade it); expected 1")
    assert error_of(write_h5(tmp_path / "small.h5", x), holdout=20) == (
        "has 20 examples and no 'x_test', so holding out 20 leaves none to train on; expected data.holdout < 20 "
        "(or build with --test-fraction)")
    with h5py.File(tmp_path / "nometa.h5", "w") as handle:
        handle.create_dataset("x", data=x)
    assert error_of(tmp_path / "nometa.h5").startswith("no group 'meta'; expected 'meta' with attributes shape")


# -- configs ------------------------------------------------------------------------------------------


def test_config_validates_and_requires_a_path(tmp_path, capsys):
    path = many_chunks(tmp_path)
    config = config_from_dict({"data": {"name": "hdf5", "path": str(path), "cache_chunks": 4}, **REST})
    assert config.data.options == HDF5Options(path=str(path), holdout=0, normalize=True, cache_chunks=4)
    with pytest.raises(ConfigError) as error:
        config_from_dict({"data": {"name": "hdf5"}, **REST})
    assert str(error.value) == "<config>: data.path: is required"
    with pytest.raises(ConfigError) as error:
        config_from_dict({"data": {"name": "hdf5", "path": " "}, **REST})
    assert str(error.value) == ("<config>: data.path: got ' ', expected the path of an HDF5 file (make one with "
                                "`toolkit data build`)")
    with pytest.raises(ConfigError, match=r"data.cache_chunks: got 0, expected a value > 0"):
        config_from_dict({"data": {"name": "hdf5", "path": str(path), "cache_chunks": 0}, **REST})
