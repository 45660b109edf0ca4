"""Data as users keep it: image folders, memory-mapped .npy files, and the DataLoader path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pyrovae import cli
from pyrovae.data import Dataset, Loader, MappedItems, Shard, from_torch_dataset, load_dataset
from pyrovae.errors import ConfigError, DataError

TINY = ["--num-epochs", "1", "--num-eval-samples", "4", "--no-progress", "-q"]


def write_folder(
    root: Path,
    classes: dict[str, int],
    size: tuple[int, int] = (6, 5),
    mode: str = "L",
    sizes: list[tuple[int, int]] | None = None,
) -> Path:
    """``classes[name]`` PNGs per class subfolder; pixel value = 40 * class index + item."""
    for label, (name, count) in enumerate(sorted(classes.items())):
        (root / name).mkdir(parents=True)
        for i in range(count):
            w, h = sizes[i % len(sizes)] if sizes else size
            value = 40 * label + i
            color = value if mode == "L" else (value, 0, 255 - value)
            Image.new(mode, (w, h), color).save(root / name / f"{i}.png")
    return root


def run_cli(argv: list, capsys) -> tuple[int, str]:
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def test_image_folder_labels_follow_subfolders(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "shapes", {"a": 5, "b": 5, "c": 5})
    data = load_dataset(path=root, test_fraction=0.4, seed=1)
    assert data.name == "shapes" and data.shape == (1, 5, 6)  # PIL sizes are (W, H)
    assert len(data.train) == 9 and len(data.test) == 6
    for x, y in ((data.train, data.train_labels), (data.test, data.test_labels)):
        value = torch.round(x[:, 0, 0, 0] * 255)
        assert torch.equal(torch.div(value, 40, rounding_mode="floor").long(), y)
    assert float(data.train.max()) <= 1.0 and data.num_classes == 3
    again = load_dataset(path=root, test_fraction=0.4, seed=1)
    assert torch.equal(again.train, data.train)  # the split is seeded


def test_image_folder_resize_and_modes(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "mixed", {"a": 3, "b": 3}, sizes=[(6, 5), (9, 7)], mode="RGB")
    data = load_dataset(path=root, image_size=(4, 3), test_fraction=0.5)
    assert data.shape == (3, 4, 3)  # colour, auto
    gray = load_dataset(path=root, image_size=(8,), image_mode="grayscale", test_fraction=0.5)
    assert gray.shape == (1, 8, 8)


@pytest.mark.parametrize(
    "case, phrase",
    [
        ("empty", "no images in"),
        ("unreadable", "cannot read image"),
        ("mixed sizes", "--image-size H W"),
    ],
)
def test_image_folder_errors_exit_2(tmp_path: Path, capsys, case: str, phrase: str) -> None:
    root = tmp_path / "images"
    if case == "empty":
        (root / "a").mkdir(parents=True)
    elif case == "unreadable":
        write_folder(root, {"a": 3, "b": 3})
        (root / "a" / "0.png").write_bytes(b"not a png")
    else:
        write_folder(root, {"a": 3, "b": 3}, sizes=[(6, 5), (9, 7)])
    code, err = run_cli(["train", "--data", root, "--workdir", tmp_path / "run", *TINY], capsys)
    assert code == 2 and phrase in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("loader", [[], ["--num-workers", "1"]], ids=["preloaded", "loader"])
def test_image_folder_trains_one_epoch_from_the_cli(tmp_path: Path, capsys, loader) -> None:
    root = write_folder(tmp_path / "images", {"a": 6, "b": 6}, size=(9, 7))
    workdir = tmp_path / "run"
    argv = ["train", "--data", root, "--image-size", 8, 8, "--batch-size", 4, "--workdir", workdir]
    code, err = run_cli([*argv, *loader, *TINY], capsys)
    assert code == 0, err
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 1
    assert "elbo" in json.loads((workdir / "evaluation.json").read_text())


def toy(loader: Loader | None, binarize: str = "none") -> Dataset:
    x = torch.rand(23, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    y = torch.arange(23)
    return Dataset("toy", x[:17], x[17:], y[:17], y[17:], binarize=binarize, loader=loader)


@pytest.mark.parametrize("shard", [None, Shard(1, 3, seed=5)])
def test_loader_path_yields_the_preloaded_batches(shard: Shard | None) -> None:
    preloaded, loaded = toy(None, "dynamic"), toy(Loader(num_workers=0), "dynamic")
    kw = {"shuffle": True, "drop_last": False, "labels": True, "shard": shard}
    first = preloaded.batches("train", 4, generator=torch.Generator().manual_seed(3), **kw)
    second = loaded.batches("train", 4, generator=torch.Generator().manual_seed(3), **kw)
    pairs = list(zip(first, second, strict=True))
    assert pairs
    for (xa, ya), (xb, yb) in pairs:  # the same items, order and Bernoulli draws
        assert torch.equal(ya, yb) and torch.equal(xa, xb)


def test_loader_with_workers_covers_each_item_once() -> None:
    data = toy(Loader(num_workers=2))
    seen = torch.cat([y for _, y in data.batches("train", 5, shuffle=True, labels=True)])
    assert sorted(seen.tolist()) == list(range(17))


def test_shard_positions_are_distributed_samplers() -> None:
    from torch.utils.data import DistributedSampler

    for rank in range(3):
        sampler = DistributedSampler(range(20), 3, rank, shuffle=True, seed=4, drop_last=True)
        positions = Shard(rank, 3, seed=4).positions(20, True, torch.device("cpu"))
        assert positions.tolist() == list(sampler)


def test_mmap_reads_rows_on_demand(tmp_path: Path) -> None:
    array = np.random.default_rng(0).integers(0, 256, size=(50, 3, 4), dtype=np.uint8)
    np.save(tmp_path / "big.npy", array)
    data = load_dataset(path=tmp_path / "big.npy", mmap=True, test_fraction=0.2, seed=0)
    eager = load_dataset(path=tmp_path / "big.npy", test_fraction=0.2, seed=0)
    assert isinstance(data.train, MappedItems) and data.mapped and data.shape == (3, 4)
    assert isinstance(data.train.array, np.memmap)
    assert torch.equal(data.train[:], eager.train) and torch.equal(data.test[:7], eager.test[:7])
    loaded = [x for x in data.batches("train", 16, shuffle=False)]
    assert torch.equal(torch.cat(loaded), eager.train)
    index = torch.tensor([5, 0, 3])
    assert torch.equal(data.train[index], eager.train[index])
    assert data.to("cpu") is data and torch.equal(data.test.to("cpu"), eager.test)


def test_mmap_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", x=np.zeros((10, 2), dtype=np.float32))
    with pytest.raises(DataError, match=r"only a \.npy file"):
        load_dataset(path=tmp_path / "x.npz", mmap=True)
    np.save(tmp_path / "x.npy", np.zeros((10, 2), dtype=np.float32))
    with pytest.raises(ConfigError, match="binarize"):
        load_dataset(path=tmp_path / "x.npy", mmap=True, binarize="static")


def test_mmap_trains_from_the_cli(tmp_path: Path, capsys) -> None:
    array = np.random.default_rng(0).random((40, 8, 8), dtype=np.float32)
    np.save(tmp_path / "x.npy", array)
    argv = ["train", "--data", tmp_path / "x.npy", "--mmap", "--workdir", tmp_path / "run"]
    code, err = run_cli([*argv, "--batch-size", "8", *TINY], capsys)
    assert code == 0, err
    code, err = run_cli(["evaluate", tmp_path / "run", "--num-samples", 4], capsys)
    assert code == 0, err


def test_a_npy_larger_than_half_the_memory_is_mapped(tmp_path: Path, monkeypatch, caplog) -> None:
    from pyrovae import run
    from pyrovae.config import Config

    np.save(tmp_path / "x.npy", np.zeros((30, 4), dtype=np.float32))
    config = Config.from_flags(data=str(tmp_path / "x.npy"))
    assert not run.load_data(config, torch.device("cpu")).mapped
    monkeypatch.setattr(run, "memory_bytes", lambda: 100)  # 480 bytes of items > 50
    data = run.load_data(config, torch.device("cpu"))
    assert data.mapped and data.loader == Loader(0) and "memory-mapping" in caplog.text


def test_any_torch_dataset_is_read_and_split() -> None:
    from torch.utils.data import TensorDataset

    x = torch.randint(0, 256, (20, 1, 3, 3), dtype=torch.uint8)
    pairs = TensorDataset(x, torch.arange(20) % 2)
    data = from_torch_dataset(pairs, name="pairs", test_fraction=0.25, seed=0)
    assert len(data.train) == 15 and len(data.test) == 5 and data.num_classes == 2
    assert float(data.train.max()) <= 1.0 and data.train.dtype == torch.float32
    both = from_torch_dataset(TensorDataset(x[:, 0].float()), TensorDataset(x[:4, 0].float()))
    assert both.shape == (3, 3) and len(both.test) == 4 and both.train_labels is None
    with pytest.raises(DataError, match="not tensors"):
        from_torch_dataset([object()] * 3)


def test_data_too_large_for_the_gpu_stay_on_the_cpu_and_come_from_a_loader(monkeypatch, caplog):
    """On a GPU with less free memory than twice the data, the batches come from a
    DataLoader in pinned memory (checked on the CPU: the GPU's free memory is faked)."""
    from pyrovae import Config
    from pyrovae.run import load_data

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000, 10**9))
    with caplog.at_level("WARNING", logger="pyrovae"):
        data = load_data(Config.from_flags(), torch.device("cuda"))
    assert data.loader == Loader(0, pin_memory=True) and data.train.device.type == "cpu"
    assert "do not fit the GPU; batches come from a DataLoader" in caplog.text
    preloaded = load_dataset("digits", seed=0)
    torch.manual_seed(0)
    a = list(data.batches("train", 64, generator=data.new_generator()))
    torch.manual_seed(0)
    b = list(preloaded.batches("train", 64, generator=preloaded.new_generator()))
    assert len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
