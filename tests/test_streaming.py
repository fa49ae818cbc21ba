"""Image folders streamed from disk (:class:`ImageFiles`) and the in-memory path beside them.

Every folder is written here with PIL: small JPEGs and PNGs of varied aspect ratios. Streamed
batches are held to what torchvision's own transforms give on the same files, training batches to
being a pure function of (seed, epoch, rank, world), subsets to the indices ``TensorData.subset``
draws, the in-memory path to main's loader (re-implemented here, compared bit for bit), and a
worker's memory to not growing with the number of images it reads.
"""

from __future__ import annotations

import contextlib
import pickle
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from repair_ray import evaluate
from repair_ray.datasets import (
    CorruptImageError,
    Dataset,
    ImageFiles,
    TensorData,
    check_dataset,
    dataset_loading,
    dataset_num_classes,
    dataset_options,
    load_dataset,
    split_sizes,
)
from repair_ray.datasets import imagefolder as imagefolder_module
from repair_ray.datasets.streaming import Transforms, channel_statistics, epoch_order
from repair_ray.datasets.tensors import standardise
from repair_ray.errors import SettingError

CLASSES = ("ant", "bee", "cat")
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def write_folder(
    root: Path, per_class: dict[str, int], *, sizes: tuple[int, int] = (40, 72), seed: int = 0, png_every: int = 5
) -> Path:
    """An image folder of ``per_class[split]`` images per class: RGB JPEGs of random height and width
    (varied aspect ratios), every ``png_every``-th a PNG, some greyscale; each class has its own colour,
    and a horizontal gradient makes an image differ from its mirror."""
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                height, width = (int(s) for s in rng.integers(sizes[0], sizes[1], 2))
                ramp = np.linspace(0, 120, width, dtype=np.float32)[None, :, None]
                colour = np.array([70 * label, 40, 200 - 60 * label], dtype=np.float32)
                noise = rng.normal(0, 20, (height, width, 3))
                pixels = np.clip(colour + ramp + noise, 0, 255).astype(np.uint8)
                image = Image.fromarray(pixels)
                if i % 7 == 3:
                    image = image.convert("L")  # greyscale files become RGB too
                image.save(folder / f"{i:03d}.{'png' if i % png_every == 0 else 'jpg'}")
            (folder / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """90 train and 30 test images of 3 classes (the test split named val)."""
    return write_folder(tmp_path_factory.mktemp("pets"), {"train": 30, "val": 10})


def streamed(folder: Path, workers: int = 0, **options) -> Dataset:
    """The folder streamed with a given normalisation (no statistics pass), decoded in this process by default."""
    return load_dataset(f"imagefolder:{folder}", load="stream", workers=workers, mean=MEAN, std=STD, **options)


def test_streamed_eval_batches_are_torchvisions_transforms_of_the_files(folder: Path) -> None:
    """Resize of the shorter side to 256/224 of the crop, centre crop, normalise: computed here with
    torchvision's functional API on PIL images of the same files."""
    test = streamed(folder, image_size=24).test
    assert isinstance(test, ImageFiles) and test.transforms.resize_size == round(24 * 256 / 224) == 27
    x, y = next(test.batches(8))
    assert x.shape == (8, 3, 24, 24) and x.dtype == torch.float32
    for i in (0, 3, 5):  # a PNG, a greyscale JPEG, a JPEG
        with Image.open(test.path(i)) as image:
            rgb = image.convert("RGB")
        expected = TF.normalize(TF.to_tensor(TF.center_crop(TF.resize(rgb, 27), 24)), list(MEAN), list(STD))
        torch.testing.assert_close(x[i], expected, rtol=0, atol=1e-5)
    assert y.tolist() == [0] * 8 and test.labels.tolist() == [0] * 10 + [1] * 10 + [2] * 10


def test_batches_cover_the_split_in_order_the_last_one_smaller(folder: Path) -> None:
    test = streamed(folder).test
    sizes = [len(y) for _, y in test.batches(7)]
    assert sizes == [7, 7, 7, 7, 2]
    labels = torch.cat([y for _, y in test.batches(7)])
    assert torch.equal(labels, test.labels)


def _epoch(files: ImageFiles, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*files.train_batches(**kwargs), strict=True)
    return torch.stack(xs), torch.stack(ys)


def test_train_batches_are_a_pure_function_of_seed_epoch_rank_and_world(folder: Path) -> None:
    train = streamed(folder, image_size=16).train
    assert isinstance(train, ImageFiles)
    before = torch.get_rng_state()
    x0, y0 = _epoch(train, batch_size=8, seed=3, epoch=1)
    assert torch.equal(torch.get_rng_state(), before)  # the process's own generator is untouched
    assert x0.shape == (90 // 8, 8, 3, 16, 16)  # the last partial batch is dropped
    two = streamed(folder, workers=2, image_size=16).train
    assert isinstance(two, ImageFiles) and two.num_workers == 2
    x2, y2 = _epoch(two, batch_size=8, seed=3, epoch=1)
    assert torch.equal(x0, x2) and torch.equal(y0, y2)  # whatever the number of workers
    # ranks 0 and 1 of world 2, side by side, are world 1's global batches
    r0, _ = _epoch(train, batch_size=8, seed=3, epoch=1, rank=0, world=2)
    r1, _ = _epoch(two, batch_size=8, seed=3, epoch=1, rank=1, world=2)
    assert r0.shape == (11, 4, 3, 16, 16) and torch.equal(torch.cat([r0, r1], dim=1), x0)
    # another epoch: another order and other crops; the same epoch again (a resumed run): the same
    x_next, y_next = _epoch(train, batch_size=8, seed=3, epoch=2)
    assert not torch.equal(y_next, y0) and not torch.equal(x_next, x0)
    assert torch.equal(_epoch(train, batch_size=8, seed=3, epoch=1)[0], x0)
    assert not torch.equal(_epoch(train, batch_size=8, seed=4, epoch=1)[0], x0)
    # without augmentation the batches are the eval images in the epoch's order, a permutation of the split
    plain, labels = _epoch(train, batch_size=8, seed=3, epoch=1, augment=False)
    order = epoch_order(len(train), seed=3, epoch=1)
    assert sorted(order.tolist()) == list(range(len(train)))
    loaded = train.load()
    assert torch.equal(plain.flatten(0, 1), loaded.x[order[:88]]) and torch.equal(
        labels.flatten(), loaded.y[order[:88]]
    )
    # augmented images are crops and flips: not the eval images
    assert not torch.allclose(x0.flatten(0, 1), plain.flatten(0, 1))


def test_train_batches_check_the_world_and_keep_a_small_split_as_one_batch(folder: Path) -> None:
    train = streamed(folder, image_size=8).train
    assert isinstance(train, ImageFiles)
    with pytest.raises(ValueError, match="divisible by world"):
        next(train.train_batches(9, seed=0, epoch=0, world=2))
    with pytest.raises(ValueError, match="rank"):
        next(train.train_batches(8, seed=0, epoch=0, rank=2, world=2))
    small = train.head(5)
    batches = list(small.train_batches(8, seed=0, epoch=0))
    assert [len(y) for _, y in batches] == [5]
    assert [len(y) for _, y in small.train_batches(8, seed=0, epoch=0, rank=1, world=2)] == [1]


def test_subset_picks_the_samples_tensordata_subset_picks(folder: Path) -> None:
    train = streamed(folder).train
    assert isinstance(train, ImageFiles)
    numbered = TensorData(torch.arange(len(train), dtype=torch.float32).view(-1, 1, 1, 1), train.labels)
    for n, seed in ((17, 0), (40, 5), (89, 1)):
        mine, theirs = train.subset(n, seed=seed), numbered.subset(n, seed=seed)
        picked = theirs.x.flatten().long().tolist()
        assert [mine.path(i) for i in range(n)] == [train.path(k) for k in picked]
        assert torch.equal(mine.labels, theirs.y)
        # a subset of a subset composes as TensorData's does
        assert [mine.subset(5, seed=2).path(i) for i in range(5)] == [
            train.path(int(k)) for k in theirs.subset(5, seed=2).x.flatten()
        ]
    assert train.subset(None) is train and train.subset(len(train)) is train and train.head(1000) is train
    assert [train.head(4).path(i) for i in range(4)] == [train.path(i) for i in range(4)]


def test_shards_cover_the_split_once_in_contiguous_parts(folder: Path) -> None:
    train = streamed(folder).train
    assert isinstance(train, ImageFiles)
    numbered = TensorData(torch.arange(len(train), dtype=torch.float32).view(-1, 1, 1, 1), train.labels)
    for world in (1, 2, 4, 7):
        files = [train.shard(rank, world) for rank in range(world)]
        tensors = [numbered.shard(rank, world) for rank in range(world)]
        sizes = [len(part) for part in files]
        assert sizes == [len(part) for part in tensors] and sum(sizes) == len(train) and max(sizes) - min(sizes) <= 1
        assert [p.path(i) for p in files for i in range(len(p))] == [train.path(i) for i in range(len(train))]
        assert torch.cat([t.x for t in tensors]).flatten().long().tolist() == list(range(len(train)))
    with pytest.raises(ValueError, match="rank"):
        train.shard(3, 3)
    with pytest.raises(ValueError, match="world"):
        numbered.shard(0, 0)


def test_load_of_a_subset_equals_its_batches_and_evaluates_alike(folder: Path) -> None:
    test = streamed(folder, image_size=12).test
    assert isinstance(test, ImageFiles)
    part = test.subset(13, seed=4)
    loaded = ImageFiles(part.files, part.transforms, indices=part.indices, num_workers=2).load()
    xs, ys = zip(*part.batches(5), strict=True)
    assert torch.equal(loaded.x, torch.cat(xs)) and torch.equal(loaded.y, torch.cat(ys))
    assert loaded.device == part.device
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 12 * 12, 3))
    streamed_metrics = evaluate(model, part, batch_size=4)  # evaluate reads len, device and batches only
    assert streamed_metrics == pytest.approx(evaluate(model, loaded, batch_size=4), rel=1e-6)


def test_a_dataset_says_whether_it_is_streamed_and_moves_either_kind(folder: Path) -> None:
    stream, memory = streamed(folder), load_dataset(f"imagefolder:{folder}", image_size=8)
    assert stream.streamed and not memory.streamed
    moved = stream.to("meta")
    assert moved.train.device == moved.test.device == torch.device("meta") and moved.streamed
    assert stream.train.device == torch.device("cpu")  # a copy: the original's batches stay where they were
    assert memory.to("meta").train.device == torch.device("meta")


def test_auto_holds_a_small_folder_in_memory_and_streams_above_the_budget(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"imagefolder:{folder}"
    assert dataset_loading(name) == "memory" and not load_dataset(name, image_size=8).streamed
    needed = 120 * 3 * 8 * 8 * 4  # both splits as float32 at 8 px
    monkeypatch.setattr(imagefolder_module, "MEMORY_BUDGET", needed)
    assert dataset_loading(name, {"image_size": 8}) == "memory"
    monkeypatch.setattr(imagefolder_module, "MEMORY_BUDGET", needed - 1)
    assert dataset_loading(name, {"image_size": 8}) == "stream"
    assert load_dataset(name, image_size=8, workers=0).streamed
    assert dataset_loading(name, {"load": "memory", "image_size": 8}) == "memory"  # asked for: no budget


def test_the_registry_answers_a_folder_on_this_machine_by_listing_it(folder: Path, tmp_path: Path) -> None:
    name = f"imagefolder:{folder}"
    assert split_sizes(name) == (90, 30) and dataset_num_classes(name) == 3
    assert dataset_options(name) == ("image_size", "load", "resize_size", "mean", "std")
    missing = f"imagefolder:{tmp_path / 'elsewhere'}"
    assert split_sizes(missing) is None and dataset_num_classes(missing) is None
    assert dataset_loading(missing) is None  # only the files could tell
    assert dataset_loading(missing, {"load": "stream"}) == "stream" and dataset_loading("mnist") == "memory"


def test_the_listing_is_cached_yet_sees_files_added_later(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "pets", {"train": 2, "test": 1})
    name = f"imagefolder:{root}"
    assert split_sizes(name) == (6, 3)
    time.sleep(0.05)  # directory times tick coarsely (a few ms): a change needs a later tick to be seen
    (root / "train" / "ant" / "999.png").write_bytes((root / "train" / "ant" / "000.png").read_bytes())
    assert split_sizes(name) == (7, 3)


def test_options_are_checked_and_workers_is_no_option(folder: Path) -> None:
    cases = [
        ({"load": "disk"}, "load", "unknown load 'disk'"),
        ({"mean": [0.5, 0.5]}, "mean", "must be three numbers"),
        ({"std": [0.2, 0.0, 0.2], "mean": [0, 0, 0]}, "std", "must be three positive numbers"),
        ({"mean": [0.5, 0.5, 0.5]}, "std", "must be given with mean"),
        ({"resize_size": 16, "image_size": 32}, "resize_size", "must be at least image_size (32)"),
        ({"resize_size": 0}, "resize_size", "must be a positive integer or null"),
        ({"workers": 2}, "workers", "takes image_size, load, resize_size, mean, std"),
    ]
    for options, key, text in cases:
        with pytest.raises(SettingError) as info:
            check_dataset("imagefolder:/anywhere", options)
        assert [k for k, _ in info.value.problems] == [key] and text in info.value.problems[0][1], info.value.problems
    check_dataset("imagefolder:/anywhere", {"load": "stream", "resize_size": 256, "image_size": 224})
    check_dataset("imagefolder:/anywhere", {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
    with pytest.raises(ValueError, match="workers"):
        load_dataset(f"imagefolder:{folder}", workers=-1)


def _mains_imagefolder(path: Path, image_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """main's in-memory loader before streaming existed (repair_ray/datasets/imagefolder.py at 2c58828), verbatim
    but for the registry around it: squash to the square, bilinear; standardise by the train split."""
    extensions = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
    train_dir = path / "train"
    test_dir = next(path / sub for sub in ("test", "val") if (path / sub).is_dir())
    classes = sorted(d.name for d in train_dir.iterdir() if d.is_dir())
    index = {c: i for i, c in enumerate(classes)}

    def split(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for class_dir in sorted(d for d in folder.iterdir() if d.is_dir()):
            for file in sorted(class_dir.iterdir()):
                if file.suffix.lower() in extensions:
                    with Image.open(file) as image:
                        rgb = image.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
                        images.append(np.asarray(rgb, dtype=np.uint8))
                    labels.append(index[class_dir.name])
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(torch.float32).div_(255).contiguous()
        return x, torch.tensor(labels, dtype=torch.int64)

    train_x, train_y = split(train_dir)
    test_x, test_y = split(test_dir)
    train_x, test_x, _ = standardise(train_x, test_x)
    return train_x, train_y, test_x, test_y


def test_the_in_memory_path_is_mains_bit_for_bit(folder: Path) -> None:
    for image_size in (32, 13):
        options = {} if image_size == 32 else {"image_size": image_size}  # 32: the default
        dataset = load_dataset(f"imagefolder:{folder}", **options)
        assert isinstance(dataset.train, TensorData) and isinstance(dataset.test, TensorData)
        train_x, train_y, test_x, test_y = _mains_imagefolder(folder, image_size)
        assert torch.equal(dataset.train.x, train_x) and torch.equal(dataset.test.x, test_x)
        assert torch.equal(dataset.train.y, train_y) and torch.equal(dataset.test.y, test_y)
        assert dataset.in_shape == (3, image_size, image_size) and dataset.num_classes == 3


def test_the_in_memory_path_takes_a_given_normalisation_and_the_streams_crop(folder: Path) -> None:
    given = load_dataset(f"imagefolder:{folder}", image_size=16, load="memory", mean=MEAN, std=STD)
    plain = load_dataset(f"imagefolder:{folder}", image_size=16, load="memory", mean=[0, 0, 0], std=[1, 1, 1])
    assert isinstance(given.train, TensorData) and isinstance(plain.train, TensorData)
    shape = (1, 3, 1, 1)
    torch.testing.assert_close(
        given.train.x, (plain.train.x - torch.tensor(MEAN).view(shape)) / torch.tensor(STD).view(shape)
    )
    # with resize_size, the in-memory images are the streamed eval images
    cropped = load_dataset(f"imagefolder:{folder}", image_size=16, load="memory", resize_size=20, mean=MEAN, std=STD)
    stream = streamed(folder, image_size=16, resize_size=20)
    assert isinstance(cropped.test, TensorData) and isinstance(stream.test, ImageFiles)
    torch.testing.assert_close(cropped.test.x, stream.test.load().x, rtol=0, atol=1e-6)


def test_the_streamed_normalisation_is_computed_from_train_images_the_same_in_every_process(folder: Path) -> None:
    one = load_dataset(f"imagefolder:{folder}", load="stream", image_size=16, workers=0)
    assert isinstance(one.train, ImageFiles)
    geometry = Transforms.unnormalised(16, 18)
    for workers in (0, 2):  # exactly the same numbers: integer sums, whatever the workers
        mean, std = channel_statistics(one.train.files, geometry, num_workers=workers)
        assert (mean, std) == (one.train.transforms.mean, one.train.transforms.std)
    x = one.train.load().x  # all 90 train images (fewer than the statistics sample): standardised
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-4, rtol=0)


def _corrupt(folder: Path, kind: str) -> Path:
    target = folder / "val" / "bee" / "004.jpg"
    if kind == "truncated":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    else:
        target.write_bytes(np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    return target


@pytest.mark.parametrize("kind", ["truncated", "random"])
@pytest.mark.parametrize("path", ["memory", "stream-0", "stream-2"])
def test_a_corrupt_image_fails_naming_the_file(tmp_path: Path, kind: str, path: str) -> None:
    root = write_folder(tmp_path / "pets", {"train": 4, "val": 6}, png_every=100)
    bad = _corrupt(root, kind)
    name = f"imagefolder:{root}"
    with pytest.raises(CorruptImageError) as info:
        if path == "memory":
            load_dataset(name)
        else:
            dataset = load_dataset(name, load="stream", workers=int(path[-1]))  # train is fine
            for _ in dataset.test.batches(4):
                pass
    assert info.value.path == str(bad) and str(bad) in str(info.value) and isinstance(info.value, ValueError)
    again = pickle.loads(pickle.dumps(info.value))  # as Ray sends it to the driver
    assert isinstance(again, CorruptImageError) and again.path == str(bad) and str(again) == str(info.value)


def _worker_rss() -> dict[int, int]:
    out = {}
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):  # a worker of an earlier test, gone meanwhile
            out[child.pid] = child.memory_info().rss
    return out


def test_a_workers_memory_does_not_grow_with_the_number_of_images(tmp_path: Path) -> None:
    """Workers read ~800 images; their resident memory after the first ~100 and at the end differs
    by far less than what holding the images they decoded in between would take."""
    root = write_folder(tmp_path / "many", {"train": 267, "test": 1}, sizes=(56, 80), png_every=1000)
    train = load_dataset(f"imagefolder:{root}", load="stream", image_size=48, mean=MEAN, std=STD, workers=2).train
    assert isinstance(train, ImageFiles) and len(train) == 801
    batch, first, last, seen_first = 16, None, None, 0
    for seen, _ in enumerate(train.batches(batch), start=1):
        if first is None and seen * batch >= 100:
            first, seen_first = _worker_rss(), seen * batch
        if seen * batch >= len(train):
            last = _worker_rss()  # the workers are done and still alive
    assert first and last
    growth = sum(last[pid] - first[pid] for pid in first if pid in last)
    decoded = (len(train) - seen_first) * 3 * 48 * 48 * 4  # float32 images decoded after the first sample
    assert growth < decoded / 4, (
        f"the workers grew by {growth / 2**20:.1f} MiB while decoding {len(train) - seen_first} images; "
        f"holding them would take {decoded / 2**20:.1f} MiB, the limit is a quarter of that"
    )


def test_a_split_keeps_no_python_object_per_image(folder: Path) -> None:
    """What the workers get of a split (its file list and selection) is a few numpy arrays, whatever its size."""
    part = streamed(folder).train.subset(50, seed=1)
    assert isinstance(part, ImageFiles)
    arrays = [part.files.names, part.files.ends, part.files.labels, part.indices]
    assert all(isinstance(a, np.ndarray) and a.dtype != object for a in arrays)
    assert part.files.nbytes == sum(a.nbytes for a in arrays[:3]) < 90 * 40  # ~11-byte names, two int64 per file


def test_a_pair_analysed_on_a_streamed_dataset_gives_the_rows_of_its_loaded_copy(folder: Path) -> None:
    """analyse_pair decodes the train samples it needs and evaluates the test split as it streams
    (a subset, flipped): the rows are those of the same images held in memory."""
    from repair_ray import PairSettings, analyse_pair

    from .helpers import briefly_trained

    stream = streamed(folder, image_size=8)
    assert isinstance(stream.train, ImageFiles) and isinstance(stream.test, ImageFiles)
    memory = Dataset("pets", stream.train.load(), stream.test.load(), 3, (3, 8, 8))
    assert isinstance(memory.train, TensorData)
    a = briefly_trained("mlp", memory.train, seed=1, steps=10, width=16, depth=2, num_classes=3)
    b = briefly_trained("mlp", memory.train, seed=2, steps=10, width=16, depth=2, num_classes=3)
    settings = PairSettings(
        aligns=("none", "activation"),
        corrections=("none", "repair"),
        alphas=3,
        train_samples=60,
        stat_samples=30,
        eval_batch_size=16,
        test_samples=20,
        test_flip=True,
    )
    rows, expected = analyse_pair(a, b, stream, settings), analyse_pair(a, b, memory, settings)
    for x, y in zip(rows.curves, expected.curves, strict=True):
        assert x == y | {"loss": pytest.approx(y["loss"], rel=1e-6)}
    assert [r["barrier_test_loss"] for r in rows.pairs] == pytest.approx(
        [r["barrier_test_loss"] for r in expected.pairs]
    )


def test_a_sweep_over_an_image_folder_keys_only_the_options_it_gives() -> None:
    """The new options have defaults that stay out of the dataset's identity: a config that does
    not set them has the model and analysis keys it had before they existed (pinned: computed with
    main's code before this change). Its 32x32 RGB images are augmented, so since ``train.pad``
    their networks keep those keys with ``pad: mean``, the padding they were trained with."""
    from repair_ray.sweep.config import parse_config
    from repair_ray.sweep.planning import analysis_keys

    from .helpers import tiny_sweep

    def keys(dataset: object, **train: object) -> tuple[dict, list[str], set[str]]:
        he = [{"arch": "mlp", "width": 16, "depth": 2, "init": "he"}]  # the zoo's init when the keys were pinned
        data = tiny_sweep("k", "/tmp/unused", dataset=dataset, models=he)
        data["train"] = {**data["train"], **train}
        config = parse_config(data, check_files=False)
        return (
            config.dataset.as_dict(),
            [p.model_key for p in config.models],
            set(analysis_keys(config.pair_settings, config.dataset.as_dict()).values()),
        )

    plain = keys("imagefolder:/tmp/rr/folder", pad="mean")
    assert plain == (
        {"name": "imagefolder:/tmp/rr/folder", "options": {}},
        ["mlp-w16-d2-none-6fa8e74307"],
        {"a5-s128-58abb124ca"},
    )
    black = keys("imagefolder:/tmp/rr/folder")  # padded with black: other networks, the same analysis
    assert black[1] != plain[1] and black[2] == plain[2]
    sized = keys({"name": "imagefolder:/tmp/rr/folder", "image_size": 16})
    assert sized[1:] == (["mlp-w16-d2-none-4a7529d6a3"], {"a5-s128-9dc887b9e4"})
    streamed_keys = keys({"name": "imagefolder:/tmp/rr/folder", "load": "stream"})
    assert streamed_keys[0]["options"] == {"load": "stream"} and streamed_keys[1] != plain[1]


def test_in_memory_decodes_a_streamed_split_and_memory_only_refuses_it(folder: Path) -> None:
    from repair_ray.datasets import in_memory, memory_only

    test = streamed(folder, image_size=8).test
    assert isinstance(test, ImageFiles)
    loaded = in_memory(test)
    assert isinstance(loaded, TensorData) and torch.equal(loaded.y, test.labels)
    assert in_memory(loaded) is loaded and memory_only(loaded, "here") is loaded
    with pytest.raises(TypeError, match="Trainer.train_epoch needs a split held in memory"):
        memory_only(test, "Trainer.train_epoch")


def test_a_network_trains_on_a_streamed_split_and_resumes_exactly(folder: Path, tmp_path: Path) -> None:
    """Training reads a streamed split's batches (their order and crops a function of the data seed and
    the epoch), learns from them, and a run interrupted after its first epoch resumes bit for bit."""
    from repair_ray.models import ModelConfig
    from repair_ray.training import TrainConfig, Trainer

    dataset = streamed(folder, image_size=16)
    model = ModelConfig("mlp", 32, 1)
    config = TrainConfig(epochs=3, batch_size=15, lr=0.05, warmup_epochs=0.5)
    whole = Trainer(model, config, dataset, seed=1).run()
    assert whole.status == "ok" and whole.metrics["test_acc"] > 0.6  # 3 classes of distinct colours; chance 1/3
    uri = str(tmp_path / "run.pt")
    interrupted = Trainer(model, config, dataset, seed=1)
    interrupted.prepare_run(uri, None)
    interrupted.finish_epoch(interrupted.train_epoch(), checkpoint_uri=uri, checkpoint_every=1, on_epoch=None)
    resumed = Trainer(model, config, dataset, seed=1).run(checkpoint_uri=uri)
    assert resumed.state_dict is not None and whole.state_dict is not None
    assert all(torch.equal(resumed.state_dict[k], whole.state_dict[k]) for k in whole.state_dict)
    assert resumed.history == whole.history
    another = Trainer(model, config, dataset, seed=1, data_seed=2).run()  # another data order: other weights
    assert another.state_dict is not None
    assert not all(torch.equal(another.state_dict[k], whole.state_dict[k]) for k in whole.state_dict)
    with pytest.raises(ValueError, match="translate"):
        Trainer(model, TrainConfig(augment="translate"), dataset, seed=1)
