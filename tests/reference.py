"""Independent references written from the paper's formulas (element by element, float64).

Nothing here imports hvd_dc: these are the yardsticks the implementation is held to.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional

import numpy as np


def dc_gradient(g, w, w_bak, lam):
    """Eq. 10's compensated gradient g + lam * g * g * (w - w_bak), one element at a time."""
    out = np.empty(len(g), dtype=np.float64)
    for i in range(len(g)):
        lam_i = lam[i] if isinstance(lam, np.ndarray) else lam
        out[i] = g[i] + lam_i * g[i] * g[i] * (w[i] - w_bak[i])
    return out


def adaptive_lambda(mean_square, g, lambda0, momentum, eps):
    """DC-ASGD-a: update MeanSquare in place with g first, then lambda0 / sqrt(MS + eps)."""
    lam = np.empty(len(g), dtype=np.float64)
    for i in range(len(g)):
        mean_square[i] = momentum * mean_square[i] + (1.0 - momentum) * g[i] * g[i]
        lam[i] = lambda0 / math.sqrt(mean_square[i] + eps)
    return lam


# -- staleness policies (the rules as written in hvd_dc/staleness.py's docstring, from the papers)


def staleness_lr_factor(tau):
    """Zhang et al. (IJCAI 2016): a gradient of staleness tau gets lr / tau (tau = 0: lr)."""
    return 1.0 if tau == 0 else 1.0 / tau


def delay_adaptive_factor(tau, num_workers):
    """Koloskova et al. (NeurIPS 2022), Eq. 11 with Section 4.4's eta_t = eta / tau_t: the
    stepsize eta for tau <= tau_C (the concurrency, M workers), eta / tau above."""
    return 1.0 if tau <= num_workers else 1.0 / tau


def gap_damped(g, w, w_bak, c_avg, k, beta=0.99):
    """Gap-Aware (Barkai et al., ICLR 2020): each element g_i / max(1, |w_i - w_bak_i| / C_hat_i),
    C_hat = C / (1 - beta^k) the bias-corrected running average of update sizes; G = 1 where
    C_hat = 0 or before any update."""
    out = np.empty(len(g), dtype=np.float64)
    for i in range(len(g)):
        c_hat = c_avg[i] / (1.0 - beta**k) if k > 0 else 0.0
        gap = abs(w[i] - w_bak[i]) / c_hat if c_hat > 0 else 0.0
        out[i] = g[i] / max(1.0, gap)
    return out


def gap_track(c_avg, w_old, w_new, beta=0.99):
    """After a server update: C_i <- beta * C_i + (1 - beta) * |w_new_i - w_old_i|, in place."""
    for i in range(len(c_avg)):
        c_avg[i] = beta * c_avg[i] + abs(w_new[i] - w_old[i]) * (1.0 - beta)


class Algorithm2:
    """The paper's Algorithm 2 with plain SGD (optionally momentum and weight decay
    applied to the compensated gradient, as torch.optim.SGD does), in float64, with an
    optional staleness policy applied to the compensated gradient."""

    def __init__(self, w0, num_workers, variant, lambda0, lr, dc_momentum=0.95, eps=1e-7,
                 mean_square="per_worker", momentum=0.0, weight_decay=0.0, nesterov=False, policy="none"):
        self.w = np.array(w0, dtype=np.float64)
        self.bak = [self.w.copy() for _ in range(num_workers)]
        self.num_workers = num_workers
        self.variant, self.lambda0, self.lr = variant, lambda0, lr
        self.dc_momentum, self.eps = dc_momentum, eps
        self.ms: Dict[int, np.ndarray] = {}
        self.shared_ms = mean_square == "global"
        self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, nesterov
        self.buf: Optional[np.ndarray] = None
        self.policy = policy
        self.updates = 0
        self.at_pull = [0] * num_workers
        self.c_avg = np.zeros_like(self.w)
        self.staleness: List[int] = []  # of every push, in order

    def push(self, m, g, lr=None):
        g = np.asarray(g, dtype=np.float64)
        lr = self.lr if lr is None else lr
        tau = self.updates - self.at_pull[m]
        self.staleness.append(tau)
        if self.variant == "none":
            gdc = g.copy()
        else:
            if self.variant == "constant":
                lam = self.lambda0
            else:
                key = 0 if self.shared_ms else m
                ms = self.ms.setdefault(key, np.zeros_like(self.w))
                lam = adaptive_lambda(ms, g, self.lambda0, self.dc_momentum, self.eps)
            gdc = dc_gradient(g, self.w, self.bak[m], lam)
        if self.policy == "staleness_lr":
            gdc = gdc * staleness_lr_factor(tau)
        elif self.policy == "delay_adaptive":
            gdc = gdc * delay_adaptive_factor(tau, self.num_workers)
        elif self.policy == "gap_aware":
            gdc = gap_damped(gdc, self.w, self.bak[m], self.c_avg, self.updates)
        d = gdc + self.weight_decay * self.w
        if self.momentum:
            self.buf = d.copy() if self.buf is None else self.momentum * self.buf + d
            d = d + self.momentum * self.buf if self.nesterov else self.buf
        w_old = self.w
        self.w = self.w - lr * d
        gap_track(self.c_avg, w_old, self.w)
        self.updates += 1

    def pull(self, m):
        self.bak[m] = self.w.copy()  # a copy, taken at the pull
        self.at_pull[m] = self.updates
        return self.w.copy()


class Algorithm2Float32:
    """Algorithm 2 with plain SGD, literally, in float32 torch ops in the formula's
    left-to-right order, one vector (a whole model or one chunk of it) at a time. The SGD
    step uses ``add_(alpha=-lr)``, which is how torch.optim.SGD rounds; the square root is
    the correctly rounded one (numpy's), as the paper's formula means."""

    def __init__(self, w0, num_workers, variant, lambda0, lr, momentum=0.95, eps=1e-7, shared_ms=False):
        import torch  # only this reference needs torch's float32 rounding

        self._torch = torch
        self.w = w0.clone()
        self.bak = [self.w.clone() for _ in range(num_workers)]
        self.variant, self.lambda0, self.lr = variant, lambda0, lr
        self.momentum, self.eps, self.shared_ms = momentum, eps, shared_ms
        self.ms = {}

    def push(self, m, g):
        """Apply worker ``m``'s gradient; the pull that follows it is the caller's."""
        torch = self._torch
        w = self.w
        if self.variant == "none":
            gdc = g
        else:
            if self.variant == "constant":
                lam = self.lambda0
            else:
                key = 0 if self.shared_ms else m
                prev = self.ms.get(key, torch.zeros_like(w))
                self.ms[key] = (self.momentum * prev) + ((1.0 - self.momentum) * (g * g))
                lam = torch.div(torch.tensor(self.lambda0), torch.from_numpy(np.sqrt((self.ms[key] + self.eps).numpy())))
            gdc = g + (((lam * g) * g) * (w - self.bak[m]))
        self.w = w.clone().add_(gdc, alpha=-self.lr)

    def pull(self, m):
        self.bak[m] = self.w.clone()
        return self.bak[m]


# -- asynchronous momentum (the rules as written in hvd_dc/async_momentum.py's docstring, from
#    Hakimi et al.'s DANA and Mitliagkas et al.'s implicit momentum)


class Dana:
    """DANA-Zero on a parameter server, float64, whole vectors: worker m's push does
    v_m <- mu v_m + g (v_m = g at its first push), w <- w - lr v_m; worker m receives the
    look-ahead w - lr mu sum_j v_j. The gradient is compensated (DC-ASGD) to, and its gap
    (Gap-Aware) measured at, the look-ahead a = w - lr mu sum_j v_j the server would send m
    before its push; weight decay is added at a; maximize negates; dampening as torch's SGD."""

    def __init__(self, w0, num_workers, lr, momentum, dampening=0.0, weight_decay=0.0, maximize=False,
                 variant="none", lambda0=0.0, dc_momentum=0.95, eps=1e-7, policy="none"):
        self.w = np.array(w0, dtype=np.float64)
        self.v = [np.zeros_like(self.w) for _ in range(num_workers)]
        self.started = [False] * num_workers
        self.bak = [self.w.copy() for _ in range(num_workers)]
        self.lr, self.mu, self.damp, self.wd, self.maximize = lr, momentum, dampening, weight_decay, maximize
        self.variant, self.lambda0, self.dc_momentum, self.eps, self.policy = variant, lambda0, dc_momentum, eps, policy
        self.ms = [np.zeros_like(self.w) for _ in range(num_workers)]
        self.c_avg = np.zeros_like(self.w)
        self.updates = 0

    def lookahead(self):
        return self.w - self.lr * self.mu * sum(self.v)

    def push(self, m, g, lr=None, momentum=None):
        if lr is not None:
            self.lr = lr
        if momentum is not None:
            self.mu = momentum
        g = np.asarray(g, dtype=np.float64)
        a = self.lookahead()
        if self.variant == "none":
            gdc = g.copy()
        else:
            lam = (self.lambda0 if self.variant == "constant"
                   else adaptive_lambda(self.ms[m], g, self.lambda0, self.dc_momentum, self.eps))
            gdc = dc_gradient(g, a, self.bak[m], lam)
        if self.policy == "gap_aware":
            gdc = gap_damped(gdc, a, self.bak[m], self.c_avg, self.updates)
        if self.maximize:
            gdc = -gdc
        d = gdc + self.wd * a
        self.v[m] = d if not self.started[m] else self.mu * self.v[m] + (1.0 - self.damp) * d
        self.started[m] = True
        w_old = self.w
        self.w = self.w - self.lr * self.v[m]
        gap_track(self.c_avg, w_old, self.w)
        self.updates += 1

    def pull(self, m):
        self.bak[m] = self.lookahead()
        return self.bak[m].copy()


class DanaFloat32:
    """DANA in float32 torch ops in the evaluation order hvd_dc/async_momentum.py documents
    (``c = lr * mu`` in double first), one vector at a time, with DC-ASGD-c/-a compensating to
    the look-ahead by the same literal formula as :class:`Algorithm2Float32`."""

    def __init__(self, w0, num_workers, variant="none", lambda0=0.0, dc_momentum=0.95, eps=1e-7):
        import torch

        self._torch = torch
        self.w = w0.clone()
        self.S = torch.zeros_like(w0)
        self.v = [torch.zeros_like(w0) for _ in range(num_workers)]
        self.started = [False] * num_workers
        self.bak = [w0.clone() for _ in range(num_workers)]
        self.variant, self.lambda0, self.dc_momentum, self.eps = variant, lambda0, dc_momentum, eps
        self.ms = {}
        self.last = (0.0, 0.0)

    def _ahead(self, lr, mu):
        return self.w - (self.S * (lr * mu))

    def push(self, m, g, lr, mu, wd=0.0, dampening=0.0):
        torch = self._torch
        a = self._ahead(lr, mu)
        if self.variant == "none":
            gdc = g.clone()
        else:
            if self.variant == "constant":
                lam = self.lambda0
            else:
                prev = self.ms.get(m, torch.zeros_like(g))
                self.ms[m] = (self.dc_momentum * prev) + ((1.0 - self.dc_momentum) * (g * g))
                lam = torch.div(torch.tensor(self.lambda0), torch.from_numpy(np.sqrt((self.ms[m] + self.eps).numpy())))
            gdc = g + (((lam * g) * g) * (a - self.bak[m]))
        if wd:
            gdc = gdc + (a * wd)
        self.S = self.S - self.v[m]
        self.v[m] = gdc if not self.started[m] else (self.v[m] * mu) + (gdc * (1.0 - dampening))
        self.started[m] = True
        self.S = self.S + self.v[m]
        self.w = self.w - (self.v[m] * lr)
        self.last = (lr, mu)

    def pull(self, m):
        self.bak[m] = self._ahead(*self.last)
        return self.bak[m]
