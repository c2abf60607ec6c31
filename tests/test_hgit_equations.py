"""Eq. 10-16 of HGIT on hand-computed numbers (lgsid_pipeline/tokenizers/hgit_loss.py, used by hgit.py)."""

import math

import torch

from lgsid_pipeline.tokenizers import hgit_loss as terms
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


def test_the_terms_live_in_hgit_loss_and_hgit_uses_those():
    assert (hgit_loss, quantise_residual, usage_kl) == (terms.hgit_loss, terms.quantise_residual, terms.usage_kl)


def test_eq14_soft_usage_by_hand():
    # T = 1; s = mean of each row's nearest distance = mean(1, 1) = 1, so the logits are -d2.
    # row 0: softmax(-1, -1 - ln 3) is proportional to (1, 1/3) -> (3/4, 1/4)
    # row 1: softmax(-1, -1) -> (1/2, 1/2); p = mean of the rows = (5/8, 3/8)
    d2 = torch.tensor([[1.0, 1.0 + math.log(3.0)], [1.0, 1.0]])
    p = terms.soft_usage(d2, temperature=1.0)
    assert torch.allclose(p, torch.tensor([0.625, 0.375]), atol=1e-7)
    # doubling every distance doubles s too: the same usage (the temperature is scale-free)
    assert torch.allclose(terms.soft_usage(2 * d2, temperature=1.0), p, atol=1e-7)
    # T = 1/2 on the same d2: logits -2 d2; row 0 is proportional to (1, 1/9) -> (9/10, 1/10),
    # row 1 stays (1/2, 1/2); p = (7/10, 3/10)
    assert torch.allclose(terms.soft_usage(d2, temperature=0.5), torch.tensor([0.7, 0.3]), atol=1e-7)


def test_eq15_kl_to_uniform_by_hand():
    # p = (3/4, 1/4), K = 2: 3/4 ln(3/4 * 2) + 1/4 ln(1/4 * 2) = 0.75 ln 1.5 - 0.25 ln 2 = 0.1308120
    p = torch.tensor([0.75, 0.25])
    assert math.isclose(float(terms.kl_to_uniform(p)), 0.75 * math.log(1.5) - 0.25 * math.log(2.0), rel_tol=1e-6)
    assert math.isclose(0.75 * math.log(1.5) - 0.25 * math.log(2.0), 0.1308120, abs_tol=1e-6)
    assert float(terms.kl_to_uniform(torch.full((4,), 0.25))) == 0.0  # uniform use: 4 * 1/4 ln 1
    # one centre takes everything: 1 * ln(1 * 4) = ln 4; the empty centres add 0 * ln(1e-12 * 4) = 0
    assert math.isclose(float(terms.kl_to_uniform(torch.tensor([1.0, 0.0, 0.0, 0.0]))), math.log(4.0), rel_tol=1e-6)


def test_eq14_15_usage_kl_is_the_kl_of_the_soft_usage():
    d2 = torch.tensor([[1.0, 1.0 + math.log(3.0)], [1.0, 1.0]])
    # p = (5/8, 3/8) (test above): 5/8 ln(5/4) + 3/8 ln(3/4) = 0.1394647 - 0.1078808 = 0.0315839
    expected = 0.625 * math.log(1.25) + 0.375 * math.log(0.75)
    assert math.isclose(float(usage_kl(d2, temperature=1.0)), expected, rel_tol=1e-5)
    assert float(usage_kl(d2, 1.0)) == float(terms.kl_to_uniform(terms.soft_usage(d2, 1.0)))


def test_eq13_reconstruction_error_by_hand():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    recon = torch.tensor([[0.0, 0.0], [3.0, 2.0]])
    # row 0: 1^2 + 2^2 = 5; row 1: 0^2 + 2^2 = 4
    assert terms.reconstruction_error(x, recon).tolist() == [5.0, 4.0]


def test_eq16_total_loss_by_hand():
    err = torch.tensor([5.0, 4.0])
    # mean(err) / total_var + lambda_reg * reg = 4.5 / 3 + 0.2 * 0.5 = 1.5 + 0.1 = 1.6
    loss = terms.total_loss(err, total_var=3.0, lambda_reg=0.2, reg=torch.tensor(0.5))
    assert math.isclose(float(loss), 1.6, rel_tol=1e-6)
    # hgit_loss is exactly Eq. 16 of Eq. 13
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    recon = torch.tensor([[0.0, 0.0], [3.0, 2.0]])
    both, e = hgit_loss(x, recon, 3.0, 0.2, torch.tensor(0.5))
    assert e.tolist() == [5.0, 4.0] and float(both) == float(loss)
