"""The ImageNet-scale path end to end, at the size of a test: a folder of JPEGs streamed from disk, a
torchvision ResNet-18 trained by two Ray Train workers per network, two more imported from files
trained elsewhere, and every pair of each analysed (alignment, RESET, REPAIR, flip test-time
augmentation on a test subset) into the tables, the status and the report.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from repair_ray import load_tables
from repair_ray.datasets import load_dataset
from repair_ray.io.networks import content_id
from repair_ray.models import ModelConfig
from repair_ray.report import write_report
from repair_ray.sweep.config import parse_config
from repair_ray.sweep.runner import run_sweep, sweep_status
from repair_ray.training import TrainConfig, train_model

CLASSES = ("circle", "square", "stripes")


def jpeg_folder(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """Three classes of 64-80 px JPEGs that a small network tells apart within an epoch: each class a
    colour and a pattern, every image its own size, position and noise."""
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                h, w = (int(v) for v in rng.integers(64, 81, 2))
                yy, xx = np.mgrid[0:h, 0:w]
                cy, cx = rng.integers(16, h - 16), rng.integers(16, w - 16)
                if label == 0:
                    mask = (yy - cy) ** 2 + (xx - cx) ** 2 < 14**2
                elif label == 1:
                    mask = (abs(yy - cy) < 12) & (abs(xx - cx) < 12)
                else:
                    mask = (xx // 6) % 2 == 0
                colour = np.array([[200, 60, 60], [60, 200, 60], [60, 60, 200]][label], dtype=np.float32)
                pixels = np.where(mask[..., None], colour, 40.0) + rng.normal(0, 25, (h, w, 3))
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.jpg", quality=90)
    return root


@pytest.mark.slow
def test_streamed_images_networks_trained_by_two_workers_and_imported_ones_every_pair(
    ray_session, tmp_path, worker_group
):
    folder = jpeg_folder(tmp_path / "images", {"train": 80, "val": 24})
    dataset_spec = {"name": f"imagefolder:{folder}", "image_size": 64, "load": "stream"}
    train = {"epochs": 1, "batch_size": 32, "lr": 0.05, "momentum": 0.9, "warmup_epochs": 0.5}

    # two networks trained elsewhere (here, by the core on the same streamed folder), saved as files
    streamed = load_dataset(dataset_spec["name"], load="stream", image_size=64, workers=0)
    assert streamed.streamed and len(streamed.train) == 240
    resnet = ModelConfig("torchvision:resnet18")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for seed, name in ((7, "run-a.pt"), (8, "run-b.safetensors")):
        state = train_model(resnet, TrainConfig(**train), streamed, seed=seed).state_dict or {}
        if name.endswith(".pt"):
            torch.save({"epoch": 1, "model": state}, elsewhere / name)
        else:
            save_file({k: v.contiguous() for k, v in state.items()}, str(elsewhere / name))

    data = {
        "name": "scale",
        "storage": str(tmp_path / "runs"),
        "dataset": dataset_spec,
        "models": [
            {"arch": "torchvision:resnet18"},
            {"arch": "torchvision:resnet18", "checkpoints": str(elsewhere / "run-*")},
        ],
        "seeds": 2,
        "train": {**train, "checkpoint_every": 1, "workers_per_trial": 2},
        "align": ["none", "activation"],
        "correction": ["none", "reset", "repair"],
        "alphas": 3,
        "eval": {
            "train_samples": 64,
            "stat_samples": 32,
            "test_samples": 40,
            "test_flip": True,
            "stat_batch_size": 32,
            "eval_batch_size": 32,
        },
    }
    config = parse_config(data)
    assert config.data_path == "stream"
    trained_plan, imported_plan = config.models
    lines: list[str] = []
    result = run_sweep(config, say=lines.append)
    assert (result.train.failed, result.pairs.failed, result.pairs.ran) == (0, 0, 2), "\n".join(lines)

    tables = load_tables(config.root)
    models = tables["models"].set_index(["model_key", "seed"])
    assert len(models) == 4 and (models["status"] == "ok").all() and (models["data_path"] == "stream").all()
    trained = models.loc[trained_plan.model_key]
    assert (trained["workers"] == 2).all() and not trained["imported"].any()
    imported = models.loc[imported_plan.model_key]
    assert imported["imported"].all()
    assert sorted(imported.index) == sorted(content_id(n.sha256) for n in imported_plan.imported or ())
    assert models["test_acc"].between(0, 1).all() and models["train_loss"].notna().all()

    pairs = tables["pairs"]
    assert len(pairs) == 2 * 2 * 3 and (pairs["status"] == "ok").all() and (pairs["data_path"] == "stream").all()
    mine = pairs[pairs["model_key"] == imported_plan.model_key]
    assert mine["source_a"].str.startswith(str(elsewhere)).all() and mine["sha256_b"].str.len().eq(64).all()
    assert pairs[pairs["model_key"] == trained_plan.model_key]["source_a"].isna().all()
    # an imported network's row is measured as the pair stage measures its endpoints (same test subset, flips)
    first = mine.iloc[0]
    assert imported.loc[first["seed_a"], "test_acc"] == pytest.approx(first["endpoint_test_acc_a"])
    assert imported.loc[first["seed_b"], "test_acc"] == pytest.approx(first["endpoint_test_acc_b"])
    # aligned and corrected, the midpoint is no worse than the naive one (a weak claim on one-epoch nets,
    # but a broken alignment or correction, e.g. a wrong permutation, breaks it)
    for key in (trained_plan.model_key, imported_plan.model_key):
        rows = pairs[pairs["model_key"] == key].set_index(["align", "correction"])["midpoint_test_acc"]
        assert rows[("activation", "repair")] >= rows[("none", "none")], rows
    assert len(tables["curves"]) == len(pairs) * 2 * 3 and len(tables["layers"]) > 0
    status = sweep_status(config.root)
    assert (status.models_ok, status.pairs_ok, status.pairs_expected) == (4, 2, 2)
    index = write_report(config.root)
    assert Path(index).is_file()
