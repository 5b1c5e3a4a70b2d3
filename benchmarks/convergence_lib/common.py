"""Tasks, models, recipe and evaluation shared by the simulator and the mpiexec mode.

Three tasks, none downloads anything:

* ``fashion``: Fashion-MNIST (Xiao, Rasul, Vollgraf 2017; 28x28 grey images of clothing,
  10 classes), read from the IDX files the Debian package ``dataset-fashion-mnist``
  installs in /usr/share/datasets/fashion-mnist (``--data DIR`` or $HVD_DC_FASHION_MNIST
  point elsewhere) by this module's own reader (:func:`read_idx`). A fixed training
  subset and a disjoint validation split are drawn from the 60,000 training images; the
  test set is the official 10,000. Model: a narrow ResNet-14 with GroupNorm
  (:class:`FashionResNet`). See benchmarks/CONVERGENCE.md for the sizes and why.

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
import gzip
import math
import os
import struct
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

METHODS = ("sgd", "ssgd", "asgd", "dc-c", "dc-a")
#: the staleness policies (hvd_dc/staleness.py) alone and combined with DC-ASGD-a
POLICY_METHODS = ("sa", "da", "ga", "dc-a+da", "dc-a+ga")
ALL_METHODS = METHODS + POLICY_METHODS
LABELS = {"sgd": "SGD", "ssgd": "SSGD", "asgd": "ASGD", "dc-c": "DC-ASGD-c", "dc-a": "DC-ASGD-a",
          "sa": "ASGD+lr/tau", "da": "ASGD+delay-adaptive", "ga": "ASGD+Gap-Aware",
          "dc-a+da": "DC-ASGD-a+delay-adaptive", "dc-a+ga": "DC-ASGD-a+Gap-Aware"}
#: hvd_dc's dc_variant for each asynchronous method
VARIANT = {"asgd": "none", "dc-c": "constant", "dc-a": "adaptive", "sgd": "none",
           "sa": "none", "da": "none", "ga": "none", "dc-a+da": "adaptive", "dc-a+ga": "adaptive"}
#: hvd_dc's staleness_policy for each method
POLICY = {"sa": "staleness_lr", "da": "delay_adaptive", "ga": "gap_aware", "dc-a+da": "delay_adaptive",
          "dc-a+ga": "gap_aware"}
DC_LAMBDA = {"none": 0.0, "constant": 0.04, "adaptive": 2.0}
DC_MOMENTUM = 0.95


def policy_of(method: str) -> str:
    return POLICY.get(method, "none")


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
    "fashion": TaskConfig("fashion", epochs=8, batch=64, base_lr=0.1, quick_epochs=2, lr_grid=(0.5, 1.0, 2.0)),
    # the Horovod-hyperparameters study (benchmarks/convergence_horovod.py sets its own epochs and grid)
    "fashion60k": TaskConfig("fashion60k", epochs=20, batch=64, base_lr=0.05, quick_epochs=2,
                             lr_grid=(0.25, 0.5, 1.0, 2.0)),
}

#: Fashion-MNIST: sizes of the fixed training subset and of the validation split, both drawn
#: (disjoint) from the 60,000 official training images; the test set is the official 10,000.
FASHION_TRAIN = 12000
FASHION_VAL = 5000
#: basic blocks per stage of the Fashion-MNIST ResNet: 2 is ResNet-14 (see benchmarks/CONVERGENCE.md
#: for why not 3, ResNet-20: ``convergence_fashion.py --parts cost`` measures both)
FASHION_BLOCKS = 2
#: ``fashion60k``: every official training image but the validation split (training on both
#: together once tuning is done: ``simulate.run(train_on_val=True)``)
FASHION_FULL_TRAIN = 60000 - FASHION_VAL
#: a smaller training subset (the quick check sets it; mpiexec ranks inherit it)
FASHION_TRAIN_ENV = "HVD_DC_FASHION_TRAIN"
FASHION_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_ENV = "HVD_DC_FASHION_MNIST"
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
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
        elif task == "fashion":
            _CACHE[task] = _fashion()
        elif task == "fashion60k":
            _CACHE[task] = _fashion(FASHION_FULL_TRAIN)
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


class DataMissing(FileNotFoundError):
    """The Fashion-MNIST IDX files are not where we look; the message says how to get them."""


def fashion_dir(data_dir: Optional[str] = None) -> str:
    """Where the Fashion-MNIST IDX files are read from: ``data_dir``, else
    $HVD_DC_FASHION_MNIST, else the Debian package's /usr/share/datasets/fashion-mnist."""
    return data_dir or os.environ.get(FASHION_ENV) or FASHION_DEFAULT_DIR


def fashion_paths(data_dir: Optional[str] = None) -> Dict[str, str]:
    """The four IDX files (gzip-compressed ``.gz``, as Debian ships them, or plain), or
    :class:`DataMissing` naming the package that provides them."""
    d = fashion_dir(data_dir)
    found, missing = {}, []
    for key, name in FASHION_FILES.items():
        for candidate in (os.path.join(d, name + ".gz"), os.path.join(d, name)):
            if os.path.isfile(candidate):
                found[key] = candidate
                break
        else:
            missing.append(name + "[.gz]")
    if missing:
        raise DataMissing(
            f"Fashion-MNIST not found: {', '.join(missing)} missing in {d}. Install the Debian package "
            f"dataset-fashion-mnist (`sudo apt-get install dataset-fashion-mnist`; it puts the IDX files in "
            f"{FASHION_DEFAULT_DIR}), or point --data (or ${FASHION_ENV}) at a directory that holds them."
        )
    return found


def read_idx(path: str) -> np.ndarray:
    """Read one IDX file (LeCun's MNIST format; gzip-compressed when the name ends in .gz):
    big-endian magic ``0x0000 <type> <ndim>``, ``ndim`` big-endian uint32 sizes, then the
    data. Only unsigned bytes (type 0x08) are accepted, which is what (Fashion-)MNIST uses."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise ValueError(f"{path}: not an IDX file (only {len(data)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08 or ndim < 1:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    header = 4 + 4 * ndim
    dims = struct.unpack(">" + "I" * ndim, data[4:header])
    count = int(np.prod(dims))
    if len(data) - header != count:
        raise ValueError(f"{path}: header says {dims} ({count} bytes) but {len(data) - header} bytes follow")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def load_fashion_arrays(data_dir: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(train_images, train_labels, test_images, test_labels)`` as uint8 arrays, checked."""
    p = fashion_paths(data_dir)
    xtr, ytr = read_idx(p["train_images"]), read_idx(p["train_labels"])
    xte, yte = read_idx(p["test_images"]), read_idx(p["test_labels"])
    for name, x, y in (("train", xtr, ytr), ("test", xte, yte)):
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.ndim != 1 or len(x) != len(y) or y.max() > 9:
            raise ValueError(f"Fashion-MNIST {name} files in {fashion_dir(data_dir)} have unexpected shapes "
                             f"{x.shape} / {y.shape}")
    return xtr, ytr, xte, yte


def fashion_train_size() -> int:
    return int(os.environ.get(FASHION_TRAIN_ENV, FASHION_TRAIN))


def fashion_split(n_images: int = 60000, n_train: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Indices into the official training set: ``(training subset, validation split)``,
    disjoint, from one fixed shuffle; the validation split is the same at any ``n_train``."""
    n_train = fashion_train_size() if n_train is None else n_train
    perm = torch.randperm(n_images, generator=torch.Generator().manual_seed(0)).numpy()
    if FASHION_VAL + n_train > n_images:
        raise ValueError(f"{n_train} training + {FASHION_VAL} validation images > the {n_images} available")
    return perm[FASHION_VAL : FASHION_VAL + n_train], perm[:FASHION_VAL]


def _fashion(n_train: Optional[int] = None):
    xtr, ytr, xte, yte = load_fashion_arrays()
    tr, va = fashion_split(len(xtr), n_train)

    def tensor(x):
        return torch.tensor(x, dtype=torch.float32).unsqueeze(1) / 255.0

    x_tr = tensor(xtr[tr])
    mean, std = float(x_tr.mean()), float(x_tr.std())  # of the training subset only
    norm = lambda x: (x - mean) / std  # noqa: E731
    lab = lambda y: torch.tensor(y.astype(np.int64))  # noqa: E731
    return norm(x_tr), lab(ytr[tr]), norm(tensor(xtr[va])), lab(ytr[va]), norm(tensor(xte)), lab(yte)


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


class _BasicBlock(torch.nn.Module):
    """Two 3x3 convolutions with GroupNorm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = torch.nn.GroupNorm(groups, cout)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = torch.nn.GroupNorm(groups, cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 1, stride, bias=False),
                                                torch.nn.GroupNorm(groups, cout))

    def forward(self, x):
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class FashionResNet(torch.nn.Module):
    """He et al.'s CIFAR ResNet-(6n+2) (the paper's ResNet-20 at n = 3; the study uses n = 2,
    ResNet-14): a 3x3 stem, three stages of n basic blocks at widths w, 2w, 4w (stride 2
    between stages), global average pooling, a linear layer. Narrowed and adapted to
    1x28x28 on one CPU core: w = 8 (the paper's 16 halved), a stride-2 stem
    (28 -> 14 -> 7 -> 4), and GroupNorm (4 groups)
    instead of BatchNorm, because BatchNorm's running statistics are buffers each worker
    would keep to itself (the parameter server serves parameters), while GroupNorm has
    none, so the simulator and the real system train exactly the same model."""

    def __init__(self, blocks_per_stage: int = 3, width: int = 8, groups: int = 4):
        super().__init__()
        w = [width, 2 * width, 4 * width]
        self.stem = torch.nn.Conv2d(1, w[0], 3, 2, 1, bias=False)
        self.stem_norm = torch.nn.GroupNorm(groups, w[0])
        layers, cin = [], w[0]
        for stage, cout in enumerate(w):
            for b in range(blocks_per_stage):
                layers.append(_BasicBlock(cin, cout, 2 if (b == 0 and stage > 0) else 1, groups))
                cin = cout
        self.layers = torch.nn.Sequential(*layers)
        self.fc = torch.nn.Linear(cin, 10)

    def forward(self, x):
        x = F.relu(self.stem_norm(self.stem(x)))
        x = self.layers(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class FashionCNN(torch.nn.Module):
    """A small 2-conv GroupNorm CNN, 1x28x28 -> 10 (207k parameters): two 3x3 convolutions
    of stride 2 (16 and 32 channels, 28 -> 14 -> 7), each with GroupNorm (4 groups) and ReLU,
    then a 128-unit hidden layer. Strided convolutions instead of pooling keep one
    forward/backward of 64 images near 2 ms on one CPU core (the full-resolution first
    convolution of the usual pooled CNN costs 4x more), which is what lets the study train
    on all 60,000 images for tens of epochs; GroupNorm for the reason given in
    :class:`FashionResNet`."""

    def __init__(self, c1: int = 16, c2: int = 32, hidden: int = 128, groups: int = 4):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, c1, 3, stride=2, padding=1)
        self.norm1 = torch.nn.GroupNorm(groups, c1)
        self.conv2 = torch.nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.norm2 = torch.nn.GroupNorm(groups, c2)
        self.fc1 = torch.nn.Linear(c2 * 7 * 7, hidden)
        self.fc2 = torch.nn.Linear(hidden, 10)

    def forward(self, x):
        x = F.relu(self.norm1(self.conv1(x)))
        x = F.relu(self.norm2(self.conv2(x)))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def make_model(task: str, seed: int) -> torch.nn.Module:
    """The task's model, initialised from ``seed`` alone (same init for every method)."""
    torch.manual_seed(seed)
    if task == "fashion60k":
        return FashionCNN()
    if task == "fashion":
        return FashionResNet(blocks_per_stage=FASHION_BLOCKS)
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
