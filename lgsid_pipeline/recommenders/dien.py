"""DIEN (Zhou et al., AAAI 2019, "Deep Interest Evolution Network"), scored exactly like DIN.

What DIEN adds over DIN: the history is read *in order*. DIN pools the history items with
target attention (a bag of behaviours); DIEN

1. **interest extractor layer**: a GRU over the history representations; each hidden state
   ``h_t`` is the user's interest after behaviour ``t``;
2. **auxiliary loss** ``L_aux``: ``h_t`` must predict the next clicked behaviour ``e_b[t+1]``
   against a sampled item the user never clicked (inner-product logits), which supervises every
   interest state instead of only the last one; ``L = L_target + aux_weight * L_aux``;
3. **interest evolving layer**: an AUGRU, a GRU whose update gate is scaled by the attention
   score ``a_t`` of ``h_t`` against the target item, so states unrelated to the target barely
   move the evolving interest; its final state ``h'_T`` is the user's interest in the target.

The tower is DIN's ``[32, 16, 1]`` on ``[h'_T, t, h'_T * t]``. Everything else is DIN's
(``din.py``): the item representation (8-d ID embedding + one 8-d embedding per SID level;
Origin = ID only), 1:4 training negatives, the ``eval_seed`` validation / test impressions,
AdamW + StepLR, early stopping on validation AUC, seeding; the shared loop is
:func:`din.train_and_evaluate_din` with ``model_cls=DIEN``.

The GRU hidden size equals the item representation size (``8 * (1 + SID levels)``), as the
inner product of ``L_aux`` needs. The attention is the paper's bilinear form
``a_t = softmax_t(h_t W e_a)`` over the valid history positions. The paper's user-profile and
context features do not exist here.

Padding: histories arrive right-aligned with 0 = pad. They are left-aligned first, so the causal
GRU reads only real items before the last one (the outputs at trailing pad positions are
ignored), and the AUGRU gets attention 0 there, which leaves its state exactly unchanged. The
number of left pads therefore never changes the output.

Auxiliary-loss negatives: one never-clicked item per training prefix and history position,
drawn once with :func:`din.sample_negatives` from the stream ``(seed, 1)`` (the training
negatives use ``seed``), so runs are reproducible and the two draws are independent.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .data import SplitData
from .din import DINConfig, DiscResult, ItemEncoder, build_mlp, sample_negatives, train_and_evaluate_din

AUX_NEG_STREAM = 1  # the auxiliary negatives are drawn from np.random.default_rng((seed, 1))


@dataclass
class DIENConfig(DINConfig):
    """DIN's settings (``attn_hidden`` is unused: DIEN's attention is bilinear) plus the
    weight ``aux_weight`` (alpha) of the auxiliary loss; 0 disables it."""

    aux_weight: float = 1.0

    def __post_init__(self):
        if not (self.aux_weight >= 0.0):
            raise ValueError(f"aux_weight must be >= 0, got {self.aux_weight}")

    @classmethod
    def from_din(cls, cfg: DINConfig, **overrides) -> DIENConfig:
        """The same settings as a DIN config (a DIENConfig is returned as is, with overrides)."""
        values = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
        return cls(**{**values, **overrides})


class AUGRUCell(nn.GRUCell):
    """GRU with attentional update gate; parameters laid out exactly like :class:`torch.nn.GRUCell`.

    GRU (paper notation, interest extractor / evolving layers):
        u_t = sigmoid(W^u i_t + U^u h_{t-1} + b^u)            (update gate)
        r_t = sigmoid(W^r i_t + U^r h_{t-1} + b^r)            (reset gate)
        h~_t = tanh(W^h i_t + r_t o U^h h_{t-1} + b^h)       (candidate state)
        h_t = (1 - u_t) o h_{t-1} + u_t o h~_t
    AUGRU (interest evolving layer):
        u~'_t = a_t * u'_t                                   (attentional update gate)
        h'_t = (1 - u~'_t) o h'_{t-1} + u~'_t o h~'_t
    torch's ``z`` gate is the paper's ``1 - u``. With ``a_t = 1`` this is a plain GRU step;
    with ``a_t = 0`` the state is returned unchanged.
    """

    def forward(self, x: torch.Tensor, h: torch.Tensor, att: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.step(F.linear(x, self.weight_ih, self.bias_ih), h, att)

    def step(self, gi: torch.Tensor, h: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        """One step from precomputed input projections ``gi = W_ih x + b_ih`` (B, 3H); ``att`` (B,)."""
        gh = F.linear(h, self.weight_hh, self.bias_hh)
        i_r, i_z, i_n = gi.chunk(3, -1)
        h_r, h_z, h_n = gh.chunk(3, -1)
        r = torch.sigmoid(i_r + h_r)  # reset gate r_t
        u = 1.0 - torch.sigmoid(i_z + h_z)  # update gate u_t (= 1 - torch's z)
        cand = torch.tanh(i_n + r * h_n)  # candidate state h~_t
        u_att = att.unsqueeze(-1) * u  # attentional update gate u~'_t = a_t * u'_t
        return h + u_att * (cand - h)  # h'_t = (1 - u~'_t) o h'_{t-1} + u~'_t o h~'_t


def _left_align(hist: torch.Tensor, *others: torch.Tensor):
    """Right-aligned (0 = left pad) -> left-aligned (pads at the end); ``others`` follow the same
    permutation. Returns (hist, lengths, *others)."""
    h = hist.shape[1]
    lengths = (hist != 0).sum(1)
    idx = (torch.arange(h, device=hist.device).unsqueeze(0) + (h - lengths).unsqueeze(1)) % h
    return (hist.gather(1, idx), lengths, *(o.gather(1, idx) for o in others))


class DIEN(ItemEncoder):
    """Deep Interest Evolution Network over DIN's item representation; 0 = padding."""

    def __init__(self, n_items: int, codes: np.ndarray | None, cfg: DINConfig):
        super().__init__(n_items, codes, cfg)
        d = self.dim
        self.aux_weight = float(getattr(cfg, "aux_weight", 1.0))
        self.extractor = nn.GRU(d, d, batch_first=True)  # interest extractor layer
        self.att_w = nn.Linear(d, d, bias=False)  # W of the attention a_t = softmax(h_t W e_a)
        self.evolver = AUGRUCell(d, d)  # interest evolving layer
        self.tower = build_mlp([3 * d, *cfg.mlp, 1])

    def _run(self, hist: torch.Tensor, target: torch.Tensor, aux_neg: torch.Tensor | None = None):
        """Logits (B,), and the auxiliary loss when ``aux_neg`` (B, H) raw item indices is given."""
        if aux_neg is None:
            hist_l, lengths = _left_align(hist)
        else:
            hist_l, lengths, neg_l = _left_align(hist, aux_neg)
        valid = hist_l != 0  # (B, H): real items first, then pads
        table = self.item_table()
        e = self.represent(hist_l, table)  # behaviour embeddings e_b[t]
        ea = self.represent(target, table)  # target embedding e_a
        states, _ = self.extractor(e)  # interest states h_t (causal: pads only after the last item)

        # attention a_t = exp(h_t W e_a) / sum_j exp(h_j W e_a), over the valid positions only
        logits_att = (states * self.att_w(ea).unsqueeze(1)).sum(-1)
        logits_att = logits_att.masked_fill(~valid, -1e9)
        att = torch.softmax(logits_att, dim=1) * valid  # an empty history gets all-zero weights

        # interest evolving layer: AUGRU over h_t; a_t = 0 at pads leaves the state unchanged
        gi = F.linear(states, self.evolver.weight_ih, self.evolver.bias_ih)
        hidden = states.new_zeros(states.shape[0], self.dim)
        for t in range(int(lengths.max()) if lengths.numel() else 0):
            hidden = self.evolver.step(gi[:, t], hidden, att[:, t])
        logits = self.tower(torch.cat([hidden, ea, hidden * ea], dim=-1)).squeeze(-1)
        if aux_neg is None:
            return logits, None

        # L_aux = -1/N sum_i sum_t [log s(<h_t, e_b[t+1]>) + log(1 - s(<h_t, e^_b[t+1]>))]
        pair = valid[:, 1:]  # h_t -> e_b[t+1] where both positions hold real items
        if not bool(pair.any()):
            return logits, logits.new_zeros(())
        h_t = states[:, :-1]
        pos = (h_t * e[:, 1:]).sum(-1)
        neg = (h_t * self.represent((neg_l[:, 1:] + 1) * pair, table)).sum(-1)
        per_step = F.softplus(-pos) + F.softplus(neg)  # -log s(pos) - log(1 - s(neg))
        return logits, per_step[pair].mean()

    def forward(self, hist: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._run(hist, target)[0]

    def training_extras(self, split: SplitData, cfg: DINConfig, prefix_users: np.ndarray, clicked: np.ndarray):
        """Auxiliary-loss negatives: (prefixes, max_history) never-clicked items, stream (seed, 1)."""
        if self.aux_weight == 0.0:
            return None
        return sample_negatives(split, prefix_users, cfg.max_history, (cfg.seed, AUX_NEG_STREAM), clicked)

    def training_loss(self, hist, target, label, extras) -> torch.Tensor:
        """L = L_target + aux_weight * L_aux."""
        logits, aux = self._run(hist, target, extras)
        loss = F.binary_cross_entropy_with_logits(logits, label)  # L_target
        if aux is not None:
            loss = loss + self.aux_weight * aux
        return loss


def train_and_evaluate_dien(split: SplitData, sids=None, config: DINConfig | None = None, log=None) -> DiscResult:
    """Train DIEN (Origin when ``sids`` is None, else ID + SID embeddings); AUC / GAUC on valid and
    test, on exactly DIN's samples and impressions. A plain :class:`DINConfig` is taken with the
    default ``aux_weight``."""
    cfg = config if isinstance(config, DIENConfig) else DIENConfig.from_din(config or DINConfig())
    return train_and_evaluate_din(split, sids, cfg, log, model_cls=DIEN)
