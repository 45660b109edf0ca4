"""Tests of pyrovae.data: sources, binarization, batching and every user-facing data error."""

from __future__ import annotations

import gzip
import struct
import urllib.error
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from pyrovae.data import (
    BINARIZE,
    DATASETS,
    Dataset,
    load_dataset,
    read_idx,
    sources,
    validate_data,
)
from pyrovae.errors import ConfigError, DataError

IDX_FILES = {
    "train-images-idx3-ubyte": "train_images",
    "train-labels-idx1-ubyte": "train_labels",
    "t10k-images-idx3-ubyte": "test_images",
    "t10k-labels-idx1-ubyte": "test_labels",
}


def write_idx(path: Path, array: np.ndarray, magic: bytes | None = None) -> None:
    """Write ``array`` (uint8) as an IDX file, gzip'd when the name ends in .gz."""
    array = np.asarray(array, dtype=np.uint8)
    header = magic if magic is not None else bytes([0, 0, 0x08, array.ndim])
    payload = header + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(payload)


def fake_idx_arrays(num_train: int = 12, num_test: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "train_images": rng.integers(0, 256, size=(num_train, 28, 28), dtype=np.uint8),
        "train_labels": np.arange(num_train, dtype=np.uint8) % 10,
        "test_images": rng.integers(0, 256, size=(num_test, 28, 28), dtype=np.uint8),
        "test_labels": np.arange(num_test, dtype=np.uint8) % 10,
    }


def write_idx_dir(directory: Path, gz: bool = True, **kwargs: int) -> dict[str, np.ndarray]:
    directory.mkdir(parents=True, exist_ok=True)
    arrays = fake_idx_arrays(**kwargs)
    for stem, key in IDX_FILES.items():
        write_idx(directory / (stem + (".gz" if gz else "")), arrays[key])
    return arrays


@pytest.fixture
def no_debian(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the Debian Fashion-MNIST directory at an empty folder."""
    empty = tmp_path / "no-debian"
    empty.mkdir()
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", empty)
    return empty


def toy_dataset(num_train: int = 10, binarize: str = "none") -> Dataset:
    train = torch.arange(num_train, dtype=torch.float32).reshape(num_train, 1) / num_train
    return Dataset(
        name="toy",
        train=train,
        test=train[:3].clone(),
        train_labels=torch.arange(num_train),
        test_labels=torch.arange(3),
        binarize=binarize,
    )


# -- registry and options ---------------------------------------------------------------------


def test_registry_names() -> None:
    assert DATASETS.names() == ["digits", "mnist", "fashion-mnist", "dsprites", "dsprites-small"]
    assert BINARIZE == ("none", "threshold", "static", "dynamic")


def test_unknown_dataset_name_raises_config_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown dataset 'cifar'.*fashion-mnist"):
        load_dataset("cifar")


@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [
        ({"binarize": "otsu"}, "unknown binarization"),
        ({"test_fraction": 0.0}, "test_fraction must be between 0 and 1"),
        ({"test_fraction": 1.5}, "test_fraction must be between 0 and 1"),
        ({"limit": 0}, "limit must be a positive"),
    ],
)
def test_bad_options_raise_config_error(kwargs: dict, phrase: str) -> None:
    with pytest.raises(ConfigError, match=phrase):
        load_dataset("digits", **kwargs)


# -- digits -----------------------------------------------------------------------------------


def test_digits_shape_range_and_labels() -> None:
    ds = load_dataset("digits")
    assert ds.name == "digits"
    assert ds.shape == (1, 8, 8)
    assert ds.train.dtype == ds.test.dtype == torch.float32
    assert (len(ds.train), len(ds.test)) == (1437, 360)
    assert float(ds.train.min()) == 0.0 and float(ds.train.max()) == 1.0
    assert ds.train_labels is not None and ds.test_labels is not None
    assert ds.train_labels.dtype == torch.int64 and len(ds.train_labels) == len(ds.train)
    assert ds.num_classes == 10


def test_digits_split_is_stratified() -> None:
    ds = load_dataset("digits", test_fraction=0.25)
    assert ds.train_labels is not None and ds.test_labels is not None
    train_counts = Counter(ds.train_labels.tolist())
    test_counts = Counter(ds.test_labels.tolist())
    for label in range(10):
        total = train_counts[label] + test_counts[label]
        assert abs(test_counts[label] - 0.25 * total) <= 1


def test_digits_split_is_deterministic_in_seed() -> None:
    a, b = load_dataset("digits", seed=3), load_dataset("digits", seed=3)
    c = load_dataset("digits", seed=4)
    assert torch.equal(a.train, b.train) and torch.equal(a.test_labels, b.test_labels)
    assert not torch.equal(a.train, c.train)


def test_limit_keeps_first_items() -> None:
    full, small = load_dataset("digits"), load_dataset("digits", limit=7)
    assert (len(small.train), len(small.test)) == (7, 7)
    assert torch.equal(small.train, full.train[:7])
    assert torch.equal(small.test_labels, full.test_labels[:7])


# -- binarization -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", BINARIZE)
def test_binarize_modes(mode: str) -> None:
    ds = load_dataset("digits", binarize=mode, limit=50)
    assert ds.binarize == mode
    first_train_batch = next(ds.batches("train", batch_size=50))
    for x in (first_train_batch, ds.test):
        values = set(x.unique().tolist())
        if mode == "none":
            assert values - {0.0, 1.0}, "grey levels must be kept"
        else:
            assert values <= {0.0, 1.0}


def test_threshold_rounds_at_one_half() -> None:
    grey, ds = (
        load_dataset("digits", limit=20),
        load_dataset("digits", binarize="threshold", limit=20),
    )
    assert torch.equal(ds.train, (grey.train > 0.5).float())


def test_static_binarization_is_deterministic_in_seed() -> None:
    a = load_dataset("digits", binarize="static", seed=1)
    b = load_dataset("digits", binarize="static", seed=1)
    c = load_dataset("digits", binarize="static", seed=2)
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert not torch.equal(a.train, c.train)
    # Two passes over a static set see the same values.
    assert torch.equal(next(a.batches(batch_size=64)), next(a.batches(batch_size=64)))


def test_dynamic_resamples_train_but_fixes_test() -> None:
    a = load_dataset("digits", binarize="dynamic", seed=1)
    b = load_dataset("digits", binarize="dynamic", seed=1)
    assert set(a.train.unique().tolist()) - {0.0, 1.0}, "train stays grey; batches are sampled"
    assert torch.equal(a.test, b.test)
    assert torch.equal(a.test, load_dataset("digits", binarize="static", seed=1).test)
    first = torch.cat(list(a.batches(batch_size=256)))
    second = torch.cat(list(a.batches(batch_size=256)))
    assert not torch.equal(first, second)
    # Test batches are the fixed sample.
    assert torch.equal(torch.cat(list(a.batches("test", batch_size=100))), a.test)


def test_dynamic_with_generator_is_reproducible() -> None:
    ds = load_dataset("digits", binarize="dynamic", limit=100)
    runs = [
        torch.cat(list(ds.batches(batch_size=32, generator=torch.Generator().manual_seed(5))))
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("mode", ["threshold", "static", "dynamic"])
def test_binarize_needs_unit_interval(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "wide.npy"
    np.save(path, np.linspace(-1.0, 3.0, 40).reshape(20, 2))
    with pytest.raises(DataError, match=r"binarization needs values in \[0, 1\]; scale the data"):
        load_dataset(path=path, binarize=mode)


# -- batching ---------------------------------------------------------------------------------


def test_shuffled_batches_cover_each_item_once() -> None:
    ds = toy_dataset(10)
    generator = torch.Generator().manual_seed(0)
    batches = list(ds.batches(batch_size=3, shuffle=True, generator=generator))
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    seen = torch.cat(batches).flatten()
    assert torch.equal(seen.sort().values, ds.train.flatten())
    assert not torch.equal(seen, ds.train.flatten()), "shuffle must change the order"


def test_unshuffled_batches_are_in_order() -> None:
    ds = toy_dataset(10)
    assert torch.equal(torch.cat(list(ds.batches(batch_size=4))), ds.train)


def test_drop_last() -> None:
    ds = toy_dataset(10)
    batches = list(ds.batches(batch_size=3, shuffle=True, drop_last=True))
    assert [len(b) for b in batches] == [3, 3, 3]
    assert ds.num_batches("train", 3, drop_last=True) == 3
    assert ds.num_batches("train", 3) == 4
    assert ds.num_batches("test", 5) == 1
    assert list(ds.batches("test", batch_size=5, drop_last=True)) == []


def test_labeled_batches_keep_pairs() -> None:
    ds = toy_dataset(10)
    for x, y in ds.batches(batch_size=4, shuffle=True, labels=True):
        assert torch.equal(x.flatten(), y.float() / 10)


def test_labeled_batches_need_labels() -> None:
    ds = Dataset("unlabelled", torch.rand(4, 2), torch.rand(2, 2), None, None)
    with pytest.raises(DataError, match="has no train labels"):
        ds.batches(labels=True)
    with pytest.raises(DataError, match="has no train labels"):
        ds.cycle(labels=True)


@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [({"split": "valid"}, "unknown split 'valid'"), ({"batch_size": 0}, "batch_size must be")],
)
def test_bad_batch_arguments(kwargs: dict, phrase: str) -> None:
    with pytest.raises(ConfigError, match=phrase):
        toy_dataset().batches(**kwargs)
    with pytest.raises(ConfigError, match=phrase):
        toy_dataset().cycle(**kwargs)


@pytest.mark.parametrize(
    ("indices", "phrase"),
    [
        (torch.tensor([0, 10]), r"indices must lie in \[0, 10\) for the train split"),
        (torch.tensor([-1]), r"indices must lie in \[0, 10\)"),
        (torch.tensor([0.0, 1.0]), "1-D tensor of integer item positions"),
        (torch.ones(2, 2, dtype=torch.int64), "1-D tensor of integer item positions"),
    ],
)
def test_bad_indices(indices: torch.Tensor, phrase: str) -> None:
    with pytest.raises(ConfigError, match=phrase):
        toy_dataset().batches(indices=indices)
    with pytest.raises(ConfigError, match=phrase):
        toy_dataset().cycle(indices=indices)


def test_cycle_refuses_empty_indices() -> None:
    with pytest.raises(ConfigError, match="empty set of indices"):
        toy_dataset().cycle(indices=torch.tensor([], dtype=torch.int64))


def pass_items(batches: list[torch.Tensor]) -> list[int]:
    """The toy items of a pass (item i of toy_dataset(10) holds i / 10), in the order seen."""
    return [round(float(v) * 10) for b in batches for v in b.flatten()]


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("indices", [None, torch.tensor([7, 2, 9, 0, 4, 5, 8])])
@pytest.mark.parametrize("shuffle", [False, True])
def test_a_pass_visits_each_item_once(
    drop_last: bool, indices: torch.Tensor | None, shuffle: bool
) -> None:
    ds = toy_dataset(10)
    wanted = list(range(10)) if indices is None else indices.tolist()
    for _epoch in range(3):
        batches = list(
            ds.batches(batch_size=3, shuffle=shuffle, drop_last=drop_last, indices=indices)
        )
        seen = pass_items(batches)
        assert len(seen) == len(set(seen)), "no item twice in a pass"
        assert set(seen) <= set(wanted)
        if drop_last:
            assert all(len(b) == 3 for b in batches)
            assert len(seen) == len(wanted) - len(wanted) % 3
        else:
            assert sorted(seen) == sorted(wanted)
        if not shuffle:
            assert seen == wanted[: len(seen)], "unshuffled passes keep the given order"


def test_labels_follow_an_index_subset() -> None:
    ds = toy_dataset(10)
    subset = torch.tensor([9, 3, 6])
    for x, y in ds.batches(batch_size=2, shuffle=True, labels=True, indices=subset):
        assert torch.equal(x.flatten(), y.float() / 10)
        assert set(y.tolist()) <= {9, 3, 6}


def dynamic_toy(num_train: int = 40) -> Dataset:
    """Grey items in (0, 1), labelled, for dynamic binarization."""
    train = torch.linspace(0.05, 0.95, num_train * 6).reshape(num_train, 6)
    return Dataset("grey", train, train[:4].clone(), torch.arange(num_train) % 4, None, "dynamic")


def one_pass(ds: Dataset, generator: torch.Generator | None = None, **kwargs) -> torch.Tensor:
    return torch.cat(list(ds.batches(batch_size=7, shuffle=True, generator=generator, **kwargs)))


def test_same_seed_same_batches_and_binarization() -> None:
    ds = dynamic_toy()
    runs = [one_pass(ds, torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    assert set(runs[0].unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(runs[0], one_pass(ds, torch.Generator().manual_seed(4)))
    # Without a generator, the global seed decides.
    torch.manual_seed(3)
    first = one_pass(ds)
    torch.manual_seed(3)
    assert torch.equal(first, one_pass(ds))
    torch.manual_seed(4)
    assert not torch.equal(first, one_pass(ds))


def test_same_seed_same_order() -> None:
    ds = toy_dataset(30)
    orders = [
        pass_items(
            list(ds.batches(batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(s)))
        )
        for s in (1, 1, 2)
    ]
    assert orders[0] == orders[1] and orders[0] != orders[2]


def test_a_pass_with_its_generator_ignores_random_draws_between_batches() -> None:
    """The batches of a pass with its own generator (M2 makes one per epoch with
    ``new_generator``) do not change when the model draws random numbers between them, as
    an SVI step does."""
    ds = dynamic_toy()
    indices = torch.arange(3, 40)
    torch.manual_seed(0)
    generator = ds.new_generator()
    quiet = torch.cat(
        list(ds.batches(batch_size=7, shuffle=True, indices=indices, generator=generator))
    )
    torch.manual_seed(0)
    generator = ds.new_generator()
    busy = []
    for x in ds.batches(batch_size=7, shuffle=True, indices=indices, generator=generator):
        busy.append(x)
        torch.rand(100)  # the model's draws
    assert torch.equal(quiet, torch.cat(busy))


def test_cycle_visits_every_item_before_repeating_one() -> None:
    ds = toy_dataset(10)
    subset = torch.tensor([1, 4, 5, 8, 9])
    for batch_size in (2, 3, 5):
        stream = ds.cycle(
            batch_size=batch_size, indices=subset, generator=torch.Generator().manual_seed(0)
        )
        seen = pass_items([next(stream) for _ in range(20)])
        assert len(seen) == 20 * batch_size
        passes = [seen[i : i + 5] for i in range(0, len(seen), 5)]
        assert all(sorted(p) == [1, 4, 5, 8, 9] for p in passes), passes
        assert len({tuple(p) for p in passes}) > 1, "each pass is reshuffled"


def test_cycle_batches_have_min_of_batch_size_and_items() -> None:
    ds = toy_dataset(10)
    stream = ds.cycle(batch_size=8, labels=True, indices=torch.tensor([2, 6, 7]))
    for _ in range(4):
        x, y = next(stream)
        assert sorted(y.tolist()) == [2, 6, 7]
        assert torch.equal(x.flatten(), y.float() / 10)
    ordered = ds.cycle(batch_size=4, shuffle=False)
    assert pass_items([next(ordered) for _ in range(5)]) == list(range(10)) * 2


def test_cycle_binarizes_with_its_generator() -> None:
    ds = dynamic_toy()
    draws = []
    for seed in (5, 5, 6):
        stream = ds.cycle(batch_size=16, generator=torch.Generator().manual_seed(seed))
        draws.append(torch.cat([next(stream) for _ in range(6)]))
    assert set(draws[0].unique().tolist()) == {0.0, 1.0}
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])


def test_to_moves_every_tensor() -> None:
    ds = toy_dataset(binarize="dynamic").to("cpu")
    assert isinstance(ds, Dataset) and ds.binarize == "dynamic"
    assert ds.train_labels is not None and ds.train_labels.device.type == "cpu"


def test_dataset_rejects_bad_fields() -> None:
    with pytest.raises(DataError, match="floating point is needed"):
        Dataset("ints", torch.ones(3, 2, dtype=torch.int64), torch.ones(1, 2), None, None)
    with pytest.raises(DataError, match="was expected"):
        Dataset("shapes", torch.ones(3, 2), torch.ones(1, 3), None, None)
    with pytest.raises(DataError, match="2 labels for 3 items"):
        Dataset(
            "labels", torch.ones(3, 2), torch.ones(1, 2), torch.zeros(2, dtype=torch.int64), None
        )
    with pytest.raises(ConfigError, match="unknown binarization"):
        Dataset("mode", torch.ones(3, 2), torch.ones(1, 2), None, None, binarize="otsu")


# -- validate_data ----------------------------------------------------------------------------


def test_validate_data_accepts_good_data() -> None:
    validate_data(torch.rand(5, 1, 8, 8), (1, 8, 8))
    validate_data(torch.ones(2, 3, dtype=torch.uint8))


def test_validate_data_reports_nan_count_and_position() -> None:
    x = torch.rand(6, 3)
    x[2, 1] = float("nan")
    x[4, 0] = float("inf")
    with pytest.raises(DataError, match=r"mine contains 1 NaN and 1 infinite .* index \(2, 1\)"):
        validate_data(x, what="mine")


@pytest.mark.parametrize(
    ("x", "shape", "phrase"),
    [
        (torch.rand(4, 2, 2), (1, 2, 2), r"shape \(2, 2\), but \(1, 2, 2\) was expected"),
        (torch.rand(0, 3), None, "has no items"),
        (torch.tensor(1.0), None, "has no items"),
        (torch.ones(3, 2, dtype=torch.bool), None, "real numbers are needed"),
        (torch.ones(3, 2, dtype=torch.complex64), None, "real numbers are needed"),
        (np.ones((3, 2)), None, "not a torch.Tensor"),
    ],
)
def test_validate_data_errors(x: torch.Tensor, shape: tuple | None, phrase: str) -> None:
    with pytest.raises(DataError, match=phrase):
        validate_data(x, shape)


# -- user files -------------------------------------------------------------------------------


def test_npy_file_is_split_and_named_after_its_stem(tmp_path: Path) -> None:
    path = tmp_path / "points.npy"
    np.save(path, np.random.default_rng(0).normal(size=(50, 3)))
    ds = load_dataset(path=path, test_fraction=0.2, seed=0)
    assert ds.name == "points" and ds.shape == (3,)
    assert (len(ds.train), len(ds.test)) == (40, 10)
    assert ds.train.dtype == torch.float32 and ds.train_labels is None
    again = load_dataset(path=str(path), test_fraction=0.2, seed=0)
    assert torch.equal(ds.test, again.test)


def test_uint8_is_scaled_and_other_numbers_are_cast(tmp_path: Path) -> None:
    np.save(tmp_path / "img.npy", np.full((10, 4, 4), 255, dtype=np.uint8))
    assert float(load_dataset(path=tmp_path / "img.npy").train.max()) == 1.0
    assert load_dataset(path=tmp_path / "img.npy").shape == (4, 4)
    # items of one value each: (N, 1), as the message refusing a 1-D array says
    np.save(tmp_path / "vec.npy", np.arange(10, dtype=np.int32).reshape(-1, 1))
    ds = load_dataset(path=tmp_path / "vec.npy")
    assert ds.shape == (1,) and float(ds.train.max()) > 1.0, "non-uint8 is cast, not scaled"


def test_npz_with_x_and_y(tmp_path: Path) -> None:
    path = tmp_path / "xy.npz"
    np.savez(path, x=np.random.default_rng(0).random((20, 2)), y=np.arange(20) % 4)
    ds = load_dataset(path=path, test_fraction=0.25)
    assert (len(ds.train), len(ds.test)) == (15, 5)
    assert ds.train_labels is not None and ds.train_labels.dtype == torch.int64
    assert ds.num_classes == 4


def test_npz_with_official_split(tmp_path: Path) -> None:
    path = tmp_path / "split.npz"
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x_train=rng.random((8, 1, 3, 3)),
        x_test=rng.random((4, 1, 3, 3)),
        y_train=np.arange(8),
        y_test=np.arange(4, dtype=np.float64),
    )
    ds = load_dataset(path=path, limit=5)
    assert ds.shape == (1, 3, 3) and (len(ds.train), len(ds.test)) == (5, 4)
    assert ds.test_labels is not None and ds.test_labels.tolist() == [0, 1, 2, 3]


def save_npz(**arrays: np.ndarray):
    def write(path: Path) -> None:
        np.savez(path, **arrays)

    return write


FILE_ERRORS = [
    ("missing.npy", None, "does not exist"),
    ("data.dat", lambda p: p.write_text("1,2\n"), "expected a .npy or .npz file"),
    ("data.csv", lambda p: p.write_text("1,2\n"), "no rows of data"),  # a header alone
    ("junk.npy", lambda p: p.write_bytes(b"not numpy at all"), "corrupt or not a NumPy file"),
    ("junk.npz", lambda p: p.write_bytes(b"PK\x03\x04broken"), "corrupt or not a NumPy file"),
    ("objects.npy", lambda p: np.save(p, np.array([{"a": 1}, None])), "dtype=object"),
    ("words.npy", lambda p: np.save(p, np.array(["a", "b", "c"])), "not numeric"),
    ("keys.npz", save_npz(images=np.ones((3, 2))), r"has keys \['images'\].*'x_train'"),
    ("nan.npy", lambda p: np.save(p, np.array([[0.1], [np.nan], [0.3]])), "1 NaN"),
    ("inf.npz", save_npz(x=np.array([[np.inf, 0.0]] * 5)), "infinite"),
    ("big.npy", lambda p: np.save(p, np.full((5, 2), 1e300)), "too large for float32"),
    ("scalar.npy", lambda p: np.save(p, np.float64(3.0)), "single number"),
    ("nolabels.npz", save_npz(x=np.ones((5, 2)), y=np.arange(4)), "4 labels for 5 items"),
    (
        "testlabels.npz",
        save_npz(x_train=np.ones((3, 2)), x_test=np.ones((2, 2)), y_test=np.arange(3)),
        "3 labels for 2 items",
    ),
    ("fraclabels.npz", save_npz(x=np.ones((4, 2)), y=np.array([0.5, 1, 2, 3])), "whole numbers"),
    ("neglabels.npz", save_npz(x=np.ones((4, 2)), y=np.array([-1, 1, 2, 3])), "negative"),
    (
        "shapes.npz",
        save_npz(x_train=np.ones((3, 2)), x_test=np.ones((2, 5))),
        r"x_train items have shape \(2,\) but x_test items have shape \(5,\)",
    ),
    ("one.npy", lambda p: np.save(p, np.ones((1, 2))), "cannot split"),
    (
        "vector.npy",
        lambda p: np.save(p, np.linspace(0, 1, 5)),
        r"is 1-D \(shape \(5,\)\): are its 5 values 5 items .* or one item of 5 features\? "
        r"Reshape it to \(5, 1\) .* or to \(1, 5\)",
    ),
    ("vector.npz", save_npz(x_train=np.ones(4), x_test=np.ones(3)), r"x_train is 1-D"),
]


@pytest.mark.parametrize(
    ("filename", "write", "phrase"), FILE_ERRORS, ids=[e[0] for e in FILE_ERRORS]
)
def test_user_file_errors(tmp_path: Path, filename: str, write, phrase: str) -> None:
    path = tmp_path / filename
    if write is not None:
        write(path)
    with pytest.raises(DataError, match=phrase) as info:
        load_dataset(path=path)
    assert "\n" not in str(info.value)


# -- IDX files: MNIST and Fashion-MNIST -------------------------------------------------------


def test_read_idx_round_trip_and_limit(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        write_idx(tmp_path / name, array)
        assert np.array_equal(read_idx(tmp_path / name), array)
        assert np.array_equal(read_idx(tmp_path / name, limit=1), array[:1])


def test_fashion_mnist_from_debian_directory(tmp_path: Path, monkeypatch) -> None:
    debian = tmp_path / "debian"
    arrays = write_idx_dir(debian, gz=True)
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", debian)
    ds = load_dataset("fashion-mnist")
    assert ds.name == "fashion-mnist" and ds.shape == (1, 28, 28)
    assert (len(ds.train), len(ds.test)) == (12, 5)
    assert torch.equal(ds.train[:, 0] * 255, torch.from_numpy(arrays["train_images"]).float())
    assert ds.test_labels is not None and ds.test_labels.tolist() == [0, 1, 2, 3, 4]
    assert len(load_dataset("fashion-mnist", limit=4, binarize="static").train) == 4


def test_mnist_from_torchvision_layout(tmp_path: Path, no_debian: Path) -> None:
    write_idx_dir(tmp_path / "MNIST" / "raw", gz=False)
    ds = load_dataset("mnist", data_dir=tmp_path, binarize="threshold")
    assert ds.shape == (1, 28, 28) and len(ds.train) == 12


def test_data_dir_directly_holds_idx_files(tmp_path: Path, no_debian: Path) -> None:
    write_idx_dir(tmp_path / "fm", gz=True)
    assert len(load_dataset("fashion-mnist", data_dir=tmp_path / "fm").test) == 5


def test_missing_idx_files_say_where_and_how(tmp_path: Path, no_debian: Path) -> None:
    with pytest.raises(DataError, match="not found") as info:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    message = str(info.value)
    for phrase in ("apt-get install dataset-fashion-mnist", "--data-dir DIR", "--download"):
        assert phrase in message
    assert str(no_debian) in message and str(tmp_path) in message
    with pytest.raises(DataError, match="--download") as info:
        load_dataset("mnist")
    assert "apt-get" not in str(info.value)


def test_corrupt_idx_bad_magic(tmp_path: Path, monkeypatch) -> None:
    debian = tmp_path / "debian"
    write_idx_dir(debian)
    write_idx(
        debian / "t10k-images-idx3-ubyte.gz", np.zeros((5, 28, 28)), magic=b"\x12\x34\x56\x03"
    )
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", debian)
    with pytest.raises(DataError, match=r"corrupt IDX file .*t10k-images.*bad magic number"):
        load_dataset("fashion-mnist")


def test_corrupt_idx_wrong_size(tmp_path: Path) -> None:
    path = tmp_path / "short-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x01\x02")
    with pytest.raises(DataError, match=r"corrupt IDX file .* ends early"):
        read_idx(path)
    path.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 2) + b"\x01\x02\x03")
    with pytest.raises(DataError, match=r"corrupt IDX file .* more data"):
        read_idx(path)
    gz = tmp_path / "broken-idx1-ubyte.gz"
    gz.write_bytes(gzip.compress(bytes([0, 0, 8, 1]) + struct.pack(">I", 2) + b"\x01\x02")[:-12])
    with pytest.raises(DataError, match="corrupt IDX file"):
        read_idx(gz)


def test_idx_images_and_labels_must_agree(tmp_path: Path, no_debian: Path) -> None:
    write_idx_dir(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(3))
    with pytest.raises(DataError, match="do not match labels"):
        load_dataset("mnist", data_dir=tmp_path)


def test_download_failure_is_a_data_error(tmp_path: Path, no_debian: Path, monkeypatch) -> None:
    torchvision = pytest.importorskip("torchvision")

    class Offline:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", Offline)
    with pytest.raises(DataError, match=r"could not download fashion-mnist.*network unreachable"):
        load_dataset("fashion-mnist", data_dir=tmp_path, download=True)


def test_download_reads_torchvision_raw_folder(
    tmp_path: Path, no_debian: Path, monkeypatch
) -> None:
    torchvision = pytest.importorskip("torchvision")

    class FakeMNIST:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            write_idx_dir(Path(root) / "MNIST" / "raw", gz=False)

    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    ds = load_dataset("mnist", data_dir=tmp_path / "dl", download=True)
    assert (len(ds.train), len(ds.test)) == (12, 5)


REAL_DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
    not (REAL_DEBIAN / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist package is not installed",
)
def test_real_debian_fashion_mnist() -> None:
    ds = load_dataset("fashion-mnist", limit=100)
    assert ds.shape == (1, 28, 28) and (len(ds.train), len(ds.test)) == (100, 100)
    assert float(ds.train.min()) >= 0.0 and float(ds.train.max()) <= 1.0
    assert ds.train_labels is not None and set(ds.train_labels.tolist()) == set(range(10))
    assert ds.num_classes == 10


def test_a_memory_mapped_1d_file_is_refused_too(tmp_path: Path) -> None:
    np.save(tmp_path / "vector.npy", np.linspace(0, 1, 6))
    with pytest.raises(DataError, match=r"vector.npy is 1-D \(shape \(6,\)\).*\(6, 1\)"):
        load_dataset(path=tmp_path / "vector.npy", mmap=True)


def test_a_named_data_dir_that_does_not_exist_is_an_error(tmp_path: Path, capsys) -> None:
    from pyrovae import cli

    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=f"--data-dir {missing} does not exist"):
        load_dataset("digits", data_dir=missing)
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="is a file, not a folder"):
        load_dataset("mnist", data_dir=tmp_path / "file")
    argv = ["train", "--workdir", str(tmp_path / "run"), "--data-dir", str(missing)]
    assert cli.main([*argv, "--no-progress", "-q"]) == 2
    err = capsys.readouterr().err
    assert f"--data-dir {missing} does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
