"""The causal mixing model: hand-computed forward and JSD, cell averaging, recovery of known parameters, determinism,
errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mechkit.errors import MechkitError
from mechkit.probes.binding_mixing import (
    MixingModel,
    MixingParams,
    cell_targets,
    fit_mixing_model,
    jensen_shannon,
    sample_mixing_data,
)

N = 6
TRUE = MixingParams(N, w_pos=4.0, sigma_coeffs=(0.6, 0.3, 0.5),  # sigma(p) = 0.5 .. 1.167, increasing
                    gate_k=(2.5, 1.0, -0.5, 0.3, 1.8, 3.0), gate_i=(-1.0, 0.7, 2.2, 0.0, 1.4, -0.3))
# every cell with p, k, i pairwise distinct: 6 * 5 * 4 = 120 (84 train, 18 validation, 18 test)
CELLS = torch.tensor([c for c in itertools.product(range(N), repeat=3) if len(set(c)) == 3])


def exact_targets(params: MixingParams, cells: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return MixingModel(params.n, params)(cells).softmax(-1)


def test_forward_equals_hand_computation():
    params = MixingParams(4, w_pos=2.0, sigma_coeffs=(0.5, -0.2, 0.8), gate_k=(0.1, 0.2, 0.3, 0.4),
                          gate_i=(-0.5, 1.5, 0.25, -1.0))
    model = MixingModel(4, params)

    def by_hand(p, k, i):
        x = p / 4
        sigma = 0.5 * x**2 - 0.2 * x + 0.8 + 1e-6
        return [2.0 * math.exp(-((a - p) ** 2) / (2 * sigma**2)) + params.gate_k[k] * (a == k)
                + params.gate_i[i] * (a == i) for a in range(4)]

    cells = [(1, 2, 3), (0, 2, 2), (3, 3, 0)]  # distinct; lexical = reflexive; positional = lexical
    expected = torch.tensor([by_hand(*c) for c in cells], dtype=torch.float64)
    torch.testing.assert_close(model(torch.tensor(cells)), expected, rtol=0, atol=1e-12)
    # one value spelled out: cell (1, 2, 3) at a = 2, sigma(1) = 0.5/16 - 0.2/4 + 0.8 + 1e-6 = 0.781251
    assert model(torch.tensor([[1, 2, 3]]))[0, 2].item() == pytest.approx(2 * math.exp(-1 / (2 * 0.781251**2)) + 0.3,
                                                                         abs=1e-12)
    torch.testing.assert_close(model.sigma(torch.tensor([0, 2])),
                               torch.tensor([0.8 + 1e-6, 0.5 / 4 - 0.1 + 0.8 + 1e-6], dtype=torch.float64))
    assert model.parameters_dict() == {"n": 4, "w_pos": 2.0, "sigma_coeffs": (0.5, -0.2, 0.8),
                                       "gate_k": params.gate_k, "gate_i": params.gate_i}


def test_default_init_is_the_papers():
    model = MixingModel(5)
    assert model.params() == MixingParams(5, 1.0, (0.0, 0.0, 3.0), (0.0,) * 5, (0.0,) * 5)


def test_jensen_shannon_known_values():
    logits = torch.tensor([[0.3, -1.2, 2.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    assert jensen_shannon(logits, logits.softmax(-1)).abs().max().item() < 1e-15
    # disjoint one-hot rows: exactly 1 bit, up to the 1e-12 clamp floor (which costs ~1e-11 bits)
    onehot = torch.tensor([[0.0, -math.inf, -math.inf], [-math.inf, -math.inf, 0.0]], dtype=torch.float64)
    targets = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(jensen_shannon(onehot, targets), torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-9)
    # P = (1, 0), Q = (1/2, 1/2): M = (3/4, 1/4); JSD = 1/2 log2(4/3) + 1/4 log2(2/3) + 1/4 log2(2)
    half = jensen_shannon(torch.tensor([[0.0, -math.inf]]), torch.tensor([[0.5, 0.5]]))
    assert half.item() == pytest.approx(0.5 * math.log2(4 / 3) + 0.25 * math.log2(2 / 3) + 0.25, abs=1e-6)


def test_cell_targets_average_per_cell():
    p = torch.tensor([2, 0, 2, 0, 2])
    k = torch.tensor([1, 1, 1, 2, 1])
    i = torch.tensor([0, 2, 0, 1, 0])
    probs = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.0, 0.5]])
    cells, targets, counts = cell_targets(p, k, i, probs)
    assert cells.tolist() == [[0, 1, 2], [0, 2, 1], [2, 1, 0]]  # sorted
    assert counts.tolist() == [1, 1, 3]
    # cell (2, 1, 0) holds rows 0, 2, 4: ((1, 0, 0) + (0, 1, 0) + (0.5, 0, 0.5)) / 3
    expected = torch.tensor([[0.2, 0.3, 0.5], [0.0, 0.0, 1.0], [1.5 / 3, 1 / 3, 0.5 / 3]], dtype=torch.float64)
    torch.testing.assert_close(targets, expected, rtol=0, atol=1e-7)


def test_exact_targets_recover_the_parameters():
    """Identifiability: with p, k, i pairwise distinct, the n - 2 answers that no gate touches pin w_pos and sigma^2
    (logit differences among them), and then each gate is the logit offset of its one answer. The softmax's
    row-constant shift cannot hide in a gate (a gate moves one answer only), so the gates are identified absolutely,
    not just relative to each other. What is not identified: the sign of sigma (only sigma^2 enters, and fits do land
    on -sigma, so |sigma| is compared), and a gate at a position that no training cell points to (next test)."""
    fit = fit_mixing_model(CELLS, exact_targets(TRUE, CELLS), N, seed=0, verbose=False)
    got = fit.params
    # measured (seeds 0, 1, 2): errors <= 2.2e-8 in every parameter; 1e-6 leaves a margin for other torch builds
    assert got.w_pos == pytest.approx(TRUE.w_pos, abs=1e-6)
    torch.testing.assert_close(got.sigma().abs(), TRUE.sigma(), rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.tensor(got.gate_k), torch.tensor(TRUE.gate_k), rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.tensor(got.gate_i), torch.tensor(TRUE.gate_i), rtol=0, atol=1e-6)
    torch.testing.assert_close(fit.predict(CELLS), exact_targets(TRUE, CELLS), rtol=0, atol=1e-6)
    assert fit.agreement > 0.999
    assert (len(fit.train_idx), len(fit.val_idx), len(fit.test_idx)) == (84, 18, 18)
    assert sorted(torch.cat([fit.train_idx, fit.val_idx, fit.test_idx]).tolist()) == list(range(len(CELLS)))
    rows = {(r["metric"], r["position"]): r for r in fit.records()}
    assert rows[("agreement", None)]["score"] == fit.agreement and rows[("agreement", None)]["n_cells"] == 18
    assert rows[("gate_k", 5)]["score"] == got.gate_k[5]


def test_a_gate_no_cell_points_to_is_not_identified():
    cells = CELLS[CELLS[:, 1] != 5]  # the lexical mechanism never points at position 5
    fit = fit_mixing_model(cells, exact_targets(TRUE, cells), N, seed=0, epochs=300, verbose=False)
    assert fit.params.gate_k[5] == 0.0  # zero gradient: Adam never moves it from its init
    assert fit.params.gate_i[5] != 0.0


def test_sampled_targets_keep_high_agreement():
    """200 answers per cell. The targets themselves are noisy, so even the true model only reaches agreement
    1 - E[JSD(true, empirical)] = 0.995 on these draws (measured; ~ (n - 1) / (8 * 200) nats from sampling alone).
    Measured for the fit: agreement 0.9944 (held-out vs empirical), 0.99975 against the exact distributions, max
    |predicted - exact| probability 0.030, |w_pos - 4| = 0.10. Gates on rarely-chosen answers are loosely pinned
    (errors up to 0.3-0.4), so they are not checked here."""
    probs = sample_mixing_data(TRUE, CELLS, 200, seed=0)
    assert probs.shape == (len(CELLS) * 200, N) and set(probs.sum(-1).tolist()) == {1.0}
    cells, targets, counts = cell_targets(*CELLS.repeat_interleave(200, 0).T, probs)
    assert counts.tolist() == [200] * len(CELLS) and cells.tolist() == CELLS.tolist()  # CELLS is sorted already
    torch.testing.assert_close(targets, sample_mixing_data(TRUE, CELLS, 200, seed=0, mean=True))
    fit = fit_mixing_model(cells, targets, N, seed=0, verbose=False)
    assert fit.agreement > 0.99
    test = cells[fit.test_idx]
    exact = exact_targets(TRUE, CELLS)
    assert 1 - jensen_shannon(fit.predict(test).log(), exact[fit.test_idx]).mean().item() > 0.999
    assert (fit.predict(CELLS) - exact).abs().max().item() < 0.06
    assert fit.params.w_pos == pytest.approx(TRUE.w_pos, abs=0.3)


def test_same_seed_same_fit_other_seed_other_split():
    targets = sample_mixing_data(TRUE, CELLS, 50, seed=3, mean=True)
    a, b = (fit_mixing_model(CELLS, targets, N, seed=0, epochs=150, verbose=False) for _ in range(2))
    assert a.params == b.params and a.test_jsd == b.test_jsd
    assert torch.equal(a.train_idx, b.train_idx) and torch.equal(a.test_idx, b.test_idx)
    c = fit_mixing_model(CELLS, targets, N, seed=1, epochs=150, verbose=False)
    assert not torch.equal(a.train_idx, c.train_idx) and c.params != a.params
    assert torch.equal(sample_mixing_data(TRUE, CELLS, 5, seed=4), sample_mixing_data(TRUE, CELLS, 5, seed=4))
    assert not torch.equal(sample_mixing_data(TRUE, CELLS, 5, seed=4), sample_mixing_data(TRUE, CELLS, 5, seed=5))


def test_early_stopping_keeps_the_best_validation_parameters():
    """5 answers per cell: the fit overfits the noise, the validation JSD turns up, and patience 50 stops it. The
    returned parameters are those after `best_epoch` steps: rerunning exactly that many steps gives them back."""
    targets = sample_mixing_data(TRUE, CELLS, 5, seed=7, mean=True)
    fit = fit_mixing_model(CELLS, targets, N, seed=0, patience=50, verbose=False)
    assert fit.best_epoch < fit.epochs_run < 5000  # measured: best 272, stopped at 321
    again = fit_mixing_model(CELLS, targets, N, seed=0, epochs=fit.best_epoch, patience=10**6, verbose=False)
    assert again.epochs_run == fit.best_epoch and again.params == fit.params and again.val_jsd == fit.val_jsd


def test_bad_inputs():
    targets = exact_targets(TRUE, CELLS)
    with pytest.raises(MechkitError, match="only 6 .* cells.*run more interchange pairs"):
        fit_mixing_model(CELLS[:6], targets[:6], N, verbose=False)
    fit_mixing_model(CELLS[:7], targets[:7], N, epochs=1, verbose=False)  # 4 / 1 / 2: the smallest that splits
    with pytest.raises(MechkitError, match="disagree"):
        fit_mixing_model(CELLS, targets[:-1], N, verbose=False)
    with pytest.raises(MechkitError, match="disagree"):
        fit_mixing_model(CELLS, targets, N + 1, verbose=False)
    with pytest.raises(MechkitError, match=r"shape \[n_cells, 3\]"):
        fit_mixing_model(CELLS[:, :2], targets, N, verbose=False)
    with pytest.raises(MechkitError, match="positions in 0..5"):
        fit_mixing_model(CELLS + 1, targets, N, verbose=False)
    with pytest.raises(MechkitError, match="targets row 3 is not a distribution"):
        fit_mixing_model(CELLS, torch.cat([targets[:3], targets[3:] * 0.5]), N, verbose=False)
    negative = targets.clone()
    negative[0, :2] = torch.tensor([-0.1, negative[0, :2].sum() + 0.1])
    with pytest.raises(MechkitError, match="targets row 0 is not a distribution"):
        fit_mixing_model(CELLS, negative, N, verbose=False)
    with pytest.raises(MechkitError, match="disagree"):
        cell_targets(CELLS[:, 0], CELLS[:-1, 1], CELLS[:, 2], targets)
    with pytest.raises(MechkitError, match="probs row 0 is not a distribution"):
        cell_targets(*CELLS.T, targets * 2)
    with pytest.raises(MechkitError, match="gate_k has 2 entries"):
        MixingParams(N, gate_k=(1.0, 2.0))
    with pytest.raises(MechkitError, match="at least one answer"):
        sample_mixing_data(TRUE, CELLS, 0)
