"""Small builders shared by the tests: structured toy data and briefly trained networks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from repair_ray import build_model
from repair_ray.datasets import TensorData


def prototype_data(shape: tuple[int, ...], n: int = 512, classes: int = 10, seed: int = 0) -> TensorData:
    """Class prototypes plus Gaussian noise: learnable in a few steps."""
    gen = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(classes, *shape, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    return TensorData(prototypes[y] + torch.randn(n, *shape, generator=gen), y)


def briefly_trained(
    arch: str, data: TensorData, *, steps: int = 30, lr: float = 0.01, seed: int = 0, init: str = "he", **kwargs
) -> nn.Module:
    """A network of the zoo after a few SGD steps, so its units are distinct and alive.

    He init by default: these few steps leave a net near its init, and from PyTorch's init an
    untrained deep net's activations shrink about √6 per layer, to where REPAIR's and BatchNorm's
    variance eps (1e-5) is a percent of a unit's variance; the tolerances of the tests that use it
    are of the mechanism, at He init's scale."""
    torch.manual_seed(seed)
    model = build_model(arch, in_shape=tuple(data.x.shape[1:]), init=init, **kwargs)
    return train_briefly(model, data, steps=steps, lr=lr, seed=seed)


def train_briefly(model: nn.Module, data: TensorData, *, steps: int = 30, lr: float = 0.01, seed: int = 0) -> nn.Module:
    """``model`` after ``steps`` seeded SGD steps on minibatches of 64 of ``data``, in eval mode."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(data), (64,), generator=gen)
        loss = F.cross_entropy(model(data.x[idx]), data.y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def tiny_sweep(name: str, storage: str, **overrides) -> dict:
    """A sweep config of seconds: small MLPs on generated data."""
    config = {
        "name": name,
        "storage": storage,
        "dataset": {"name": "synthetic", "shape": [1, 8, 8], "num_classes": 4, "train_size": 512, "test_size": 256},
        "models": [{"arch": "mlp", "width": 16, "depth": 2}],
        "seeds": 3,
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.05, "checkpoint_every": 1},
        "align": ["none", "weight", "activation"],
        "correction": ["none", "repair"],
        "alphas": 5,
        "eval": {"train_samples": 256, "stat_samples": 128},
    }
    config.update(overrides)
    return config


def write_yaml(path, data: dict) -> str:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def list_names(uri: str) -> list[str]:
    """Sorted names in the folder ``uri`` (local or on an object store); empty when it does not exist."""
    from pyarrow import fs as pafs

    from repair_ray.io import storage

    filesystem, path = storage.resolve(uri)
    infos = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(info.base_name for info in infos)
