"""HGIT's training objective as pure functions (paper Eq. 10-16): the differentiable residual
step and the loss terms ``_train_residual_centres`` in ``hgit.py`` combines per batch.

Each function takes tensors and returns tensors, with no state; each equation has its home here.
"""

from __future__ import annotations

import torch

from lgsid_pipeline.tokenizers.kmeans import sq_distances


def quantise_residual(R: torch.Tensor, mu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                  torch.Tensor]:
    """One residual level: ``(d2, z, Q, R - Q)``. Eq. 10: ``z = argmin_k |R - mu_k|^2`` (no
    gradient through the choice); Eq. 11: ``Q = mu_z`` (the gradient reaches the chosen centres);
    Eq. 12: the next residual ``R - Q``. ``d2`` (the squared distances) feeds Eq. 14."""
    d2 = sq_distances(R, mu)
    z = d2.detach().argmin(1)  # Eq. 10
    # Eq. 11; embedding() is mu[z] with a CPU backward that sums each centre's gradient in a
    # fixed order (the index_put behind mu[z] adds them in thread order, so a fit on two
    # threads differed from run to run)
    Q = torch.nn.functional.embedding(z, mu)
    return d2, z, Q, R - Q  # Eq. 12


def soft_usage(d2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 14 made differentiable: the batch's soft usage of each centre,
    ``p_k = mean_i softmax_k(-d2_ik / (T s))`` with ``s`` the batch's mean nearest squared
    distance (so ``T`` does not depend on the scale of the embeddings). Sums to 1."""
    scale = d2.detach().min(1).values.mean().clamp_min(1e-12)
    return torch.softmax(-d2 / (temperature * scale), dim=1).mean(0)  # Eq. 14


def kl_to_uniform(p: torch.Tensor) -> torch.Tensor:
    """Eq. 15: ``KL(p || u) = sum_k p_k log(p_k / (1/K))`` with ``u`` uniform over the ``K``
    centres: 0 when every centre is used equally, ``log K`` when one centre takes every item."""
    return (p * torch.log(p.clamp_min(1e-12) * p.shape[0])).sum()  # Eq. 15


def usage_kl(d2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 14-15: one level's regulariser, :func:`kl_to_uniform` of :func:`soft_usage`."""
    return kl_to_uniform(soft_usage(d2, temperature))  # Eq. 14-15


def reconstruction_error(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Eq. 13 per item: ``err_i = |x_i - sum_l Q_i(l)|^2`` (``recon`` the summed quantisations)."""
    return ((x - recon) ** 2).sum(1)  # Eq. 13


def total_loss(err: torch.Tensor, total_var: float, lambda_reg: float, reg: torch.Tensor) -> torch.Tensor:
    """Eq. 16: ``mean(err) / total_var + lambda_reg * reg`` (``reg`` the summed Eq. 15 terms of
    the levels l >= 2). Dividing Eq. 13 by the embeddings' total variance makes ``lambda_reg``
    mean the same on any encoder."""
    return err.mean() / total_var + lambda_reg * reg  # Eq. 16


def hgit_loss(x: torch.Tensor, recon: torch.Tensor, total_var: float, lambda_reg: float,
              reg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 13 and 16: ``(loss, err)``, :func:`total_loss` of the :func:`reconstruction_error`
    ``err`` (returned too: the training loop reports its sum)."""
    err = reconstruction_error(x, recon)  # Eq. 13
    return total_loss(err, total_var, lambda_reg, reg), err  # Eq. 16
