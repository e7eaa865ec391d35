"""The causal mixing model of binding mechanisms (methods.md §4.1, Mixing Mechanisms; Gur-Arieh, Geva, Geiger 2025).

Each patched run of an interchange experiment over n entity groups has three positions in 0..n-1: p (where the
positional mechanism points), k (lexical) and i (reflexive), and an answer distribution over the n candidates. The
model predicts that distribution as the softmax over a = 0..n-1 of

    logits(a | p, k, i) = w_pos * exp(-(a - p)^2 / (2 sigma(p)^2)) + gate_k[k] * 1[a = k] + gate_i[i] * 1[a = i]
    sigma(p) = c0 * (p/n)^2 + c1 * (p/n) + c2 + 1e-6

a Gaussian positional bump whose width grows (or shrinks) along the context, plus one learned boost per position for
the lexical and reflexive pointers. `cell_targets` averages the runs per (p, k, i) cell, `fit_mixing_model` fits the
model by Jensen-Shannon divergence on 70% of the cells and reports agreement (1 - JSD in bits) on 15% held out, and
`sample_mixing_data` draws synthetic answers from known parameters (to check that a fit recovers them).

Everything is float64: the model has 2n + 4 parameters and a few hundred cells, so precision costs nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from mechkit.errors import MechkitError

SIGMA_INIT = (0.0, 0.0, 3.0)  # (c0, c1, c2), highest power first, as in the paper
SPLIT_PERCENT = (70, 15)  # train, validation; the test split gets the rest
MIN_DELTA = 1e-6  # a validation improvement smaller than this does not reset the patience counter
DTYPE = torch.float64


def jensen_shannon(pred_logits: Float[Tensor, "row n"], target_probs: Float[Tensor, "row n"]) -> Float[Tensor, " row"]:
    """Jensen-Shannon divergence in bits between softmax(pred_logits) and target_probs, per row (0 .. 1).

    P = softmax(pred).clamp_min(1e-12); Q = target clamped to 1e-12 and renormalized; M = (P + Q) / 2;
    JSD = KL(P || M) / 2 + KL(Q || M) / 2, in log2."""
    p = pred_logits.softmax(-1).clamp_min(1e-12)
    q = target_probs.clamp_min(1e-12)
    q = q / q.sum(-1, keepdim=True)
    m = (p + q) / 2
    return 0.5 * (p * (p.log2() - m.log2())).sum(-1) + 0.5 * (q * (q.log2() - m.log2())).sum(-1)


@dataclass(frozen=True)
class MixingParams:
    """A parameter set of the mixing model for n groups: w_pos, sigma_coeffs (c0, c1, c2), gate_k [n], gate_i [n]."""

    n: int
    w_pos: float = 1.0
    sigma_coeffs: tuple[float, float, float] = SIGMA_INIT
    gate_k: tuple[float, ...] | None = None  # None: zeros
    gate_i: tuple[float, ...] | None = None

    def __post_init__(self):
        for name in ("gate_k", "gate_i"):
            gate = getattr(self, name)
            object.__setattr__(self, name, tuple(float(g) for g in (gate if gate is not None else [0.0] * self.n)))
            if len(getattr(self, name)) != self.n:
                raise MechkitError(f"{name} has {len(getattr(self, name))} entries but n = {self.n}; give one per "
                                   "group position")
        if len(self.sigma_coeffs) != 3:
            raise MechkitError(f"sigma_coeffs has {len(self.sigma_coeffs)} entries; give three (c0, c1, c2), "
                               "highest power first")
        object.__setattr__(self, "sigma_coeffs", tuple(float(c) for c in self.sigma_coeffs))
        object.__setattr__(self, "w_pos", float(self.w_pos))

    def sigma(self) -> Float[Tensor, " n"]:
        """sigma(p) at p = 0..n-1."""
        return MixingModel(self.n, self).sigma(torch.arange(self.n)).detach()


class MixingModel(torch.nn.Module):
    """The paper's minimal causal model (causal_model.py::MinimalModel) for n groups; float64 parameters,
    initialized deterministically (w_pos 1, sigma coefficients (0, 0, 3), gates 0) unless `params` are given."""

    def __init__(self, n: int, params: MixingParams | None = None):
        super().__init__()
        params = params if params is not None else MixingParams(n)
        if params.n != n:
            raise MechkitError(f"the parameters are for n = {params.n} groups but the model has n = {n}; "
                               "build the model with the parameters' n")
        self.n = n
        self.w_pos = torch.nn.Parameter(torch.tensor(params.w_pos, dtype=DTYPE))
        self.sigma_coeffs = torch.nn.Parameter(torch.tensor(params.sigma_coeffs, dtype=DTYPE))
        self.gate_k = torch.nn.Parameter(torch.tensor(params.gate_k, dtype=DTYPE))
        self.gate_i = torch.nn.Parameter(torch.tensor(params.gate_i, dtype=DTYPE))

    def sigma(self, p: Int[Tensor, " cell"]) -> Float[Tensor, " cell"]:
        """Width of the positional bump at position p: quadratic in p/n, plus 1e-6. Only sigma^2 enters the logits,
        so a fit may land on -sigma: compare |sigma|."""
        x = p.to(DTYPE) / self.n
        c0, c1, c2 = self.sigma_coeffs
        return c0 * x**2 + c1 * x + c2 + 1e-6

    def forward(self, cells: Int[Tensor, "cell 3"]) -> Float[Tensor, "cell n"]:
        """Logits over the n answer positions for each (p, k, i) cell."""
        p, k, i = cells.long().unbind(-1)
        a = torch.arange(self.n, dtype=DTYPE)
        bump = torch.exp(-((a - p[:, None].to(DTYPE)) ** 2) / (2 * self.sigma(p)[:, None] ** 2))
        onehot_k = torch.nn.functional.one_hot(k, self.n).to(DTYPE)
        onehot_i = torch.nn.functional.one_hot(i, self.n).to(DTYPE)
        return self.w_pos * bump + self.gate_k[k, None] * onehot_k + self.gate_i[i, None] * onehot_i

    def params(self) -> MixingParams:
        """The current parameters as plain floats."""
        return MixingParams(self.n, self.w_pos.item(), tuple(self.sigma_coeffs.tolist()),
                            tuple(self.gate_k.tolist()), tuple(self.gate_i.tolist()))

    def parameters_dict(self) -> dict:
        """{n, w_pos, sigma_coeffs, gate_k, gate_i} as plain Python numbers (JSON-ready)."""
        return asdict(self.params())


def _check_cells(cells: Tensor, n: int, name: str = "cells") -> None:
    if cells.ndim != 2 or cells.shape[1] != 3:
        raise MechkitError(f"{name} has shape {tuple(cells.shape)}; give one (p, k, i) row per cell, shape [n_cells, 3]")
    if cells.is_floating_point() or (cells.numel() and (cells.min() < 0 or cells.max() >= n)):
        raise MechkitError(f"{name} must hold integer positions in 0..{n - 1} (n = {n} groups)")


def _check_distributions(probs: Tensor, name: str) -> None:
    bad = (probs < -1e-9).any(-1) | ((probs.sum(-1) - 1).abs() > 1e-4) | ~probs.isfinite().all(-1)
    if bad.any():
        row = int(bad.nonzero()[0])
        raise MechkitError(f"{name} row {row} is not a distribution (sum {probs[row].sum().item():.4g}, min "
                           f"{probs[row].min().item():.4g}); pass softmax probabilities over the n answer positions")


def cell_targets(
    p: Int[Tensor, " sample"], k: Int[Tensor, " sample"], i: Int[Tensor, " sample"], probs: Float[Tensor, "sample n"]
) -> tuple[Int[Tensor, "cell 3"], Float[Tensor, "cell n"], Int[Tensor, " cell"]]:
    """Mean answer distribution per distinct (p, k, i) cell: (cells sorted lexicographically, targets, counts)."""
    if probs.ndim != 2 or not (p.shape == k.shape == i.shape == probs.shape[:1]):
        raise MechkitError(f"p, k, i ({tuple(p.shape)}, {tuple(k.shape)}, {tuple(i.shape)}) and probs "
                           f"({tuple(probs.shape)}) disagree; give one position each and one distribution row per "
                           "sample")
    n = probs.shape[1]
    samples = torch.stack([p, k, i], -1).long()
    _check_cells(samples, n, "p, k, i")
    _check_distributions(probs, "probs")
    cells, inverse, counts = torch.unique(samples, dim=0, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(cells), n, dtype=DTYPE).index_add_(0, inverse, probs.to(DTYPE))
    return cells, sums / counts[:, None], counts


def sample_mixing_data(
    params: MixingParams, cells: Int[Tensor, "cell 3"], n_samples: int, seed: int = 0, mean: bool = False
) -> Float[Tensor, "sample n"]:
    """Synthetic answers drawn from `params`: for each cell, `n_samples` categorical draws from the model's softmax.

    Returns one-hot rows [n_cells * n_samples, n], cell-major (the samples of cell c are rows c*n_samples ..
    (c+1)*n_samples - 1, so their cells are `cells.repeat_interleave(n_samples, 0)`), or with mean=True the
    per-cell empirical distribution [n_cells, n]. Draws use a local torch.Generator seeded with `seed`."""
    _check_cells(cells, params.n)
    if n_samples < 1:
        raise MechkitError(f"n_samples is {n_samples}; draw at least one answer per cell")
    with torch.no_grad():
        probs = MixingModel(params.n, params)(cells).softmax(-1)
    draws = torch.multinomial(probs, n_samples, replacement=True, generator=torch.Generator().manual_seed(seed))
    onehot = torch.nn.functional.one_hot(draws, params.n).to(DTYPE)  # [cell, sample, n]
    return onehot.mean(1) if mean else onehot.reshape(-1, params.n)


@dataclass
class MixingFit:
    """A fitted mixing model: best-validation parameters, mean JSD (bits) per split, agreement = 1 - test JSD.

    train_idx / val_idx / test_idx index the rows of the `cells` given to `fit_mixing_model`."""

    params: MixingParams
    train_jsd: float
    val_jsd: float
    test_jsd: float
    epochs_run: int
    best_epoch: int
    train_idx: Int[Tensor, " train"]
    val_idx: Int[Tensor, " val"]
    test_idx: Int[Tensor, " test"]
    seed: int

    @property
    def n(self) -> int:
        return self.params.n

    @property
    def agreement(self) -> float:
        """1 - mean JSD (bits) on the held-out test cells."""
        return 1.0 - self.test_jsd

    def predict(self, cells: Int[Tensor, "cell 3"]) -> Float[Tensor, "cell n"]:
        """Predicted answer distributions for (p, k, i) cells."""
        _check_cells(cells, self.n)
        with torch.no_grad():
            return MixingModel(self.n, self.params)(cells).softmax(-1)

    def records(self) -> list[dict]:
        """Tidy rows: n_groups, metric, position (None where not per position), score, n_cells, seed. Metrics:
        w_pos, sigma_c0/c1/c2, sigma (per p), gate_k and gate_i (per position), jsd_train/val/test, agreement."""
        sizes = {"train": len(self.train_idx), "val": len(self.val_idx), "test": len(self.test_idx)}
        n_train = sizes["train"]
        rows = [("w_pos", None, self.params.w_pos, n_train)]
        rows += [(f"sigma_c{power}", None, c, n_train) for power, c in enumerate(self.params.sigma_coeffs)]
        rows += [("sigma", p, s, n_train) for p, s in enumerate(self.params.sigma().tolist())]
        rows += [("gate_k", a, g, n_train) for a, g in enumerate(self.params.gate_k)]
        rows += [("gate_i", a, g, n_train) for a, g in enumerate(self.params.gate_i)]
        rows += [(f"jsd_{split}", None, getattr(self, f"{split}_jsd"), sizes[split]) for split in sizes]
        rows += [("agreement", None, self.agreement, sizes["test"])]
        return [{"n_groups": self.n, "metric": metric, "position": position, "score": float(score), "n_cells": count,
                 "seed": self.seed} for metric, position, score, count in rows]


def fit_mixing_model(
    cells: Int[Tensor, "cell 3"],
    targets: Float[Tensor, "cell n"],
    n: int,
    seed: int = 0,
    epochs: int = 5000,
    patience: int = 500,
    lr: float = 5e-2,
    verbose: bool = True,
) -> MixingFit:
    """Fit the mixing model to per-cell target distributions (from `cell_targets`).

    Cells are shuffled with torch.randperm under a local generator seeded with `seed`: the first 70% train, the
    next 15% validate, the rest test. Adam (lr, betas 0.9/0.999), full batch, on the mean JSD in bits, for up to
    `epochs` epochs; training stops once the validation JSD has not dropped by MIN_DELTA = 1e-6 for `patience`
    epochs, and the parameters with the lowest validation JSD seen are kept."""
    if targets.ndim != 2 or targets.shape[1] != n or cells.ndim != 2 or len(cells) != len(targets):
        raise MechkitError(f"cells {tuple(cells.shape)} and targets {tuple(targets.shape)} disagree with n = {n}; "
                           "give cells [n_cells, 3] and targets [n_cells, n], one row per cell")
    _check_cells(cells, n)
    _check_distributions(targets, "targets")
    n_cells = len(cells)
    n_train, n_val = SPLIT_PERCENT[0] * n_cells // 100, SPLIT_PERCENT[1] * n_cells // 100
    if min(n_train, n_val, n_cells - n_train - n_val) < 1:
        raise MechkitError(f"only {n_cells} (p, k, i) cells: the 70/15/15 train/validation/test split needs at least "
                           "7 so that each split has one; run more interchange pairs (or more groups)")
    cells, targets = cells.long(), targets.to(DTYPE)
    order = torch.randperm(n_cells, generator=torch.Generator().manual_seed(seed))
    split = order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]
    (train, val, test) = split

    model = MixingModel(n)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999))
    best_val, reference, best_state, best_epoch, since, epoch = float("inf"), float("inf"), None, 0, 0, 0
    bar = tqdm(range(epochs), desc=f"mixing model, {n_cells} cells", disable=not verbose)
    for epoch in bar:
        optimizer.zero_grad()
        jensen_shannon(model(cells[train]), targets[train]).mean().backward()
        optimizer.step()
        with torch.no_grad():
            val_jsd = jensen_shannon(model(cells[val]), targets[val]).mean().item()
        if val_jsd < best_val:
            best_val, best_epoch = val_jsd, epoch + 1
            best_state = {name: value.detach().clone() for name, value in model.state_dict().items()}
        if val_jsd < reference - MIN_DELTA:
            reference, since = val_jsd, 0
        else:
            since += 1
        if epoch % 100 == 0:
            bar.set_postfix(val_jsd=f"{val_jsd:.2e}")
        if since >= patience:
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    with torch.no_grad():
        jsd = [jensen_shannon(model(cells[s]), targets[s]).mean().item() for s in split]
    return MixingFit(model.params(), *jsd, epochs_run=epoch + 1 if epochs else 0, best_epoch=best_epoch,
                     train_idx=train, val_idx=val, test_idx=test, seed=seed)
