"""Eq. 10-16 of HGIT on hand-computed numbers (lgsid_pipeline/tokenizers/hgit.py)."""

import math

import torch

from lgsid_pipeline.tokenizers.hgit import hgit_loss, quantise_residual, usage_kl


def test_eq10_12_nearest_centre_and_next_residual():
    R = torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 2.0]])
    mu = torch.tensor([[0.0, 0.0], [2.0, 2.0], [0.0, 4.0]], requires_grad=True)
    d2, z, Q, nxt = quantise_residual(R, mu)
    # |R - mu_k|^2 by hand: row 0 -> (1, 5, 17), row 1 -> (9, 5, 1), row 2 -> (8, 0, 8)
    assert torch.allclose(d2, torch.tensor([[1.0, 5.0, 17.0], [9.0, 5.0, 1.0], [8.0, 0.0, 8.0]]))
    assert z.tolist() == [0, 2, 1]  # Eq. 10
    assert Q.tolist() == [[0.0, 0.0], [0.0, 4.0], [2.0, 2.0]]  # Eq. 11
    assert nxt.tolist() == [[1.0, 0.0], [0.0, -1.0], [0.0, 0.0]]  # Eq. 12
    Q.sum().backward()  # the gradient reaches exactly the chosen centres, once per use
    assert mu.grad.tolist() == [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]


def test_eq14_15_usage_kl_is_zero_for_even_use_and_log_k_for_one_centre():
    # two items, two centres, each item on its own centre: p = (0.5, 0.5) exactly when the far
    # centre's weight vanishes (a tiny temperature), so the KL from uniform is 0
    d2 = torch.tensor([[0.0, 100.0], [100.0, 0.0]]) + 1.0
    assert abs(float(usage_kl(d2, temperature=1e-3))) < 1e-6
    # every item on centre 0: p -> (1, 0), KL -> log 2
    one = torch.tensor([[1.0, 101.0], [1.0, 101.0]])
    assert math.isclose(float(usage_kl(one, temperature=1e-3)), math.log(2), rel_tol=1e-6)
    # by hand at T = 1: s = mean nearest d2 = 1; p_i = softmax(-d2_i) per row, then the mean
    d2 = torch.tensor([[1.0, 2.0], [1.0, 3.0]])
    rows = torch.tensor([[math.exp(-1), math.exp(-2)], [math.exp(-1), math.exp(-3)]])
    p = (rows / rows.sum(1, keepdim=True)).mean(0)
    expected = float((p * torch.log(2 * p)).sum())
    assert math.isclose(float(usage_kl(d2, temperature=1.0)), expected, rel_tol=1e-6)
    # the temperature is relative to the batch's scale: multiplying every distance changes nothing
    assert math.isclose(float(usage_kl(10 * d2, temperature=1.0)), expected, rel_tol=1e-6)


def test_eq13_16_loss_is_variance_normalised_error_plus_weighted_usage_term():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    recon = torch.tensor([[1.0, 0.0], [0.0, 4.0]])
    loss, err = hgit_loss(x, recon, total_var=2.0, lambda_reg=0.5, reg=torch.tensor(0.3))
    assert err.tolist() == [4.0, 9.0]  # Eq. 13: |x - x_hat|^2 per item
    assert math.isclose(float(loss), (4.0 + 9.0) / 2 / 2.0 + 0.5 * 0.3, rel_tol=1e-6)  # Eq. 16
