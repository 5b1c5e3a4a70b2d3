"""Tasks, models, recipe and evaluation shared by the simulator and the mpiexec mode.

Two tasks, neither downloads anything:

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images), with the
  quick-start example's small CNN. Split (fixed): 1,300 train / 200 validation / 297 test.
* ``shapes``: *Shapes-10*, a procedurally generated 10-class colour image task at
  3x16x16 (see :func:`make_shapes`): a randomly placed, scaled, rotated and coloured shape
  on a cluttered textured background, partly occluded, with pixel noise. 3,000 train /
  500 validation / 1,000 test, generated from a fixed seed (the same data on every run).
  It stands in for CIFAR-10: colour 10-class images, a conv net with no batch norm,
  non-convex, and it needs tens of epochs and a decaying learning rate to approach its
  floor, which is well above zero, so stale gradients have room to hurt.

Recipe (the paper's, scaled to the tasks): plain SGD without momentum, per-worker batch
``batch``, ``epochs`` epochs, learning rate divided by 10 at 50% and 75% of training
(the paper: 80 and 120 of 160), DC-ASGD-c lambda0 = 0.04, DC-ASGD-a lambda0 = 2 with
MeanSquare momentum 0.95 (the paper's CIFAR-10 values).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

METHODS = ("sgd", "ssgd", "asgd", "dc-c", "dc-a")
LABELS = {"sgd": "SGD", "ssgd": "SSGD", "asgd": "ASGD", "dc-c": "DC-ASGD-c", "dc-a": "DC-ASGD-a"}
#: hvd_dc's dc_variant for each asynchronous method
VARIANT = {"asgd": "none", "dc-c": "constant", "dc-a": "adaptive", "sgd": "none"}
DC_LAMBDA = {"none": 0.0, "constant": 0.04, "adaptive": 2.0}
DC_MOMENTUM = 0.95


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    name: str
    epochs: int
    batch: int  # per worker
    base_lr: float  # reference point of the learning-rate grid
    quick_epochs: int
    lr_grid: Tuple[float, ...]  # multipliers of base_lr tried for every (method, M)


TASKS: Dict[str, TaskConfig] = {
    "digits": TaskConfig("digits", epochs=16, batch=16, base_lr=0.1, quick_epochs=4, lr_grid=(0.25, 0.5, 1.0, 2.0)),
    "shapes": TaskConfig("shapes", epochs=16, batch=32, base_lr=0.1, quick_epochs=2, lr_grid=(0.5, 1.0, 2.0)),
}


def lr_grid(task: str, method: str, m: int) -> List[float]:
    """The learning rates tried for (task, method, M): the same number for every method.
    SSGD's grid is scaled by sqrt(M): it takes M times fewer steps on M-times larger batches."""
    cfg = TASKS[task]
    base = cfg.base_lr * (math.sqrt(m) if method == "ssgd" else 1.0)
    return [round(base * k, 6) for k in cfg.lr_grid]


def centre_lr(task: str, method: str, m: int) -> float:
    """The grid point equal to base_lr (x sqrt(M) for SSGD): used when tuning is skipped."""
    cfg = TASKS[task]
    return lr_grid(task, method, m)[list(cfg.lr_grid).index(1.0)]


def lr_at(lr: float, epoch: int, epochs: int) -> float:
    """Step schedule: lr, lr/10 from 50% of training, lr/100 from 75% (paper: 80/120 of 160)."""
    if epoch >= (3 * epochs) // 4:
        return lr / 100.0
    if epoch >= epochs // 2:
        return lr / 10.0
    return lr


# ---------------------------------------------------------------------------------------
# data

_CACHE: Dict[str, Tuple[torch.Tensor, ...]] = {}


def load_task(task: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_val, y_val, x_test, y_test)``, identical on every call."""
    if task not in _CACHE:
        if task == "digits":
            _CACHE[task] = _digits()
        elif task == "shapes":
            _CACHE[task] = _shapes()
        else:
            raise ValueError(f"unknown task {task!r}")
    return _CACHE[task]


def _digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    x = (x - 0.3) / 0.4
    y = torch.tensor(y, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    tr, va, te = perm[:1300], perm[1300:1500], perm[1500:]
    return x[tr], y[tr], x[va], y[va], x[te], y[te]


def _shapes():
    x, y = make_shapes(4500, seed=12345)
    x = torch.from_numpy(x)
    y = torch.from_numpy(y)
    return x[:3000], y[:3000], x[3000:3500], y[3000:3500], x[3500:], y[3500:]


def _shape_mask(kind: int, u: np.ndarray, v: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Membership of points (u, v) (shape-centred, rotated) in shape ``kind`` of size s."""
    au, av = np.abs(u), np.abs(v)
    if kind == 0:  # disk
        return u * u + v * v < s * s
    if kind == 1:  # ring
        r = np.sqrt(u * u + v * v)
        return np.abs(r - 0.8 * s) < 0.25 * s
    if kind == 2:  # filled square
        return np.maximum(au, av) < 0.8 * s
    if kind == 3:  # hollow square
        m = np.maximum(au, av)
        return (m < 0.9 * s) & (m > 0.55 * s)
    if kind == 4:  # triangle, apex up
        return (v > -0.7 * s) & (v < 0.8 * s) & (au < 0.55 * (0.8 * s - v))
    if kind == 5:  # plus
        return ((au < 0.25 * s) & (av < s)) | ((av < 0.25 * s) & (au < s))
    if kind == 6:  # diamond
        return au + av < s
    if kind == 7:  # horizontal bar
        return (av < 0.3 * s) & (au < 1.1 * s)
    if kind == 8:  # vertical bar pair (two strokes)
        return (np.abs(au - 0.5 * s) < 0.2 * s) & (av < s)
    if kind == 9:  # X
        return ((np.abs(u - v) < 0.3 * s) | (np.abs(u + v) < 0.3 * s)) & (np.maximum(au, av) < 0.8 * s)
    raise ValueError(kind)


def make_shapes(n: int, seed: int, size: int = 16, supersample: int = 2) -> Tuple[np.ndarray, np.ndarray]:
    """Shapes-10: ``n`` RGB ``size`` x ``size`` images, labels 0..9, deterministic in ``seed``.

    Each image: a smooth random colour gradient plus a random oriented sinusoidal texture
    (clutter), one shape of the label's kind (random centre, size, rotation within +-30
    degrees, random colour, so contrast is sometimes low), a random occluding rectangle
    of background-like colour, then Gaussian pixel noise. Rendered at 2x and averaged
    down (anti-aliasing), standardised per channel.
    """
    rng = np.random.RandomState(seed)
    hi = size * supersample
    coords = (np.arange(hi) + 0.5) / supersample  # pixel units of the final image
    gy, gx = np.meshgrid(coords, coords, indexing="ij")
    labels = rng.randint(0, 10, size=n).astype(np.int64)
    images = np.empty((n, 3, size, size), dtype=np.float32)
    for i in range(n):
        k = labels[i]
        # background: colour gradient + texture
        c0, c1 = rng.rand(3), rng.rand(3)
        ang = rng.rand() * 2 * np.pi
        t = (np.cos(ang) * gx + np.sin(ang) * gy) / size
        bg = c0[:, None, None] * (1 - t) + c1[:, None, None] * t
        f = rng.uniform(0.3, 1.2)
        ang2 = rng.rand() * np.pi
        tex = np.sin(f * (np.cos(ang2) * gx + np.sin(ang2) * gy) + rng.rand() * 6.28)
        bg = bg + rng.uniform(0.0, 0.2) * tex[None] * rng.choice([-1, 1], size=3)[:, None, None]
        # the shape
        s = rng.uniform(3.5, 6.0)
        cx, cy = rng.uniform(s * 0.8, size - s * 0.8, size=2)
        th = np.deg2rad(rng.uniform(-30, 30))
        dx, dy = gx - cx, gy - cy
        u = np.cos(th) * dx + np.sin(th) * dy
        v = -np.sin(th) * dx + np.cos(th) * dy
        mask = _shape_mask(k, u, v, np.float64(s))
        # shape colour: the background's mean shifted by a random contrast (0.25..0.6)
        shift = rng.uniform(0.25, 0.6) * rng.choice([-1, 1]) * np.ones(3) + rng.uniform(-0.2, 0.2, size=3)
        col = np.clip(bg.mean(axis=(1, 2)) + shift, -0.3, 1.3)
        img = np.where(mask[None], col[:, None, None], bg)
        # an occluder: a rectangle of a background-like colour over part of the image
        ox, oy = rng.uniform(0, size, size=2)
        ow, oh = rng.uniform(1.0, 3.5, size=2)
        occ = (np.abs(gx - ox) < ow / 2) & (np.abs(gy - oy) < oh / 2)
        img = np.where(occ[None], (c0 + rng.rand(3) * 0.3)[:, None, None], img)
        img = img.reshape(3, size, supersample, size, supersample).mean(axis=(2, 4))
        img = img + rng.normal(0, 0.1, size=img.shape)
        images[i] = img
    mean = images.mean(axis=(0, 2, 3), keepdims=True)
    std = images.std(axis=(0, 2, 3), keepdims=True)
    return ((images - mean) / std).astype(np.float32), labels


# ---------------------------------------------------------------------------------------
# models


class DigitsCNN(torch.nn.Module):
    """The quick-start example's CNN (examples/train_digits.py), 1x8x8 -> 10."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.fc = torch.nn.Linear(32 * 2 * 2, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


class ShapesCNN(torch.nn.Module):
    """Three 3x3 conv layers and a linear layer, no batch norm, 3x16x16 -> 10 (15.6k parameters)."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = torch.nn.Conv2d(32, 32, 3, padding=1)
        self.fc = torch.nn.Linear(32 * 2 * 2, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # 8x8
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # 4x4
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)  # 2x2
        return self.fc(x.flatten(1))


def make_model(task: str, seed: int) -> torch.nn.Module:
    """The task's model, initialised from ``seed`` alone (same init for every method)."""
    torch.manual_seed(seed)
    return DigitsCNN() if task == "digits" else ShapesCNN()


def batch_order(n: int, batch: int, seed: int, epoch: int) -> List[torch.Tensor]:
    """The epoch's minibatches (index tensors) of one global shuffled stream."""
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    perm = torch.randperm(n, generator=g)
    return [perm[i : i + batch] for i in range(0, n - batch + 1, batch)]


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 1000) -> Tuple[float, float]:
    """(error %, mean cross-entropy) of ``model`` on ``(x, y)``."""
    model.eval()
    wrong, loss = 0, 0.0
    for i in range(0, len(x), chunk):
        out = model(x[i : i + chunk])
        loss += float(F.cross_entropy(out, y[i : i + chunk], reduction="sum"))
        wrong += int((out.argmax(1) != y[i : i + chunk]).sum())
    model.train()
    return 100.0 * wrong / len(x), loss / len(x)
