"""TIGER's encoder-decoder transformer: the fast functional forward and the reference path."""

from __future__ import annotations

import torch
from torch import nn

from .codec import BOS, N_SPECIAL, PAD, SIDCodec
from .config import TigerConfig

__all__ = ["TigerModel", "autocast"]


class TigerModel(nn.Module):
    """The encoder-decoder. Parameters live in standard ``nn.Transformer*`` modules (so saved
    weights load either way); ``cfg.fast`` picks how they are run:

    - ``fast=True`` (default): a lean functional forward over the same parameters, with
      ``scaled_dot_product_attention``, a head evaluated only on each level's own code slice
      (the masked full-vocabulary softmax it replaces gives exactly the same loss and
      log-probs), and a key/value-cached decoder for beam search;
    - ``fast=False``: the modules' own forward (the reference path the speed benchmark and
      the equivalence tests compare against).

    Encoder positions are right-aligned (the most recent item always has the last position
    id), so a batch whose histories are all shorter than ``max_history`` can drop its leading
    padding columns without changing any output.
    """

    def __init__(self, cfg: TigerConfig, n_codes: int, levels: int):
        super().__init__()
        self.cfg = cfg
        self.levels = levels
        self.n_codes = n_codes
        vocab = N_SPECIAL + n_codes + cfg.user_buckets
        self.embed = nn.Embedding(vocab, cfg.d_model, padding_idx=PAD)
        n_pos = cfg.max_history * (levels if cfg.history_tokens == "flat" else 1) + 1
        self.enc_pos = nn.Embedding(n_pos, cfg.d_model)
        # an untrimmed input's length (the window, plus the user token when there is one): its
        # positions are 0 .. full_len - 1, and a trimmed input keeps the last ones
        self.full_len = n_pos - 1 + (1 if cfg.user_buckets else 0)
        self.dec_pos = nn.Embedding(levels + 1, cfg.d_model)
        enc_layer = nn.TransformerEncoderLayer(
            cfg.d_model, cfg.heads, cfg.ff_dim, cfg.dropout, batch_first=True, norm_first=True
        )
        dec_layer = nn.TransformerDecoderLayer(
            cfg.d_model, cfg.heads, cfg.ff_dim, cfg.dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(
            enc_layer, cfg.enc_layers, norm=nn.LayerNorm(cfg.d_model), enable_nested_tensor=False
        )
        self.decoder = nn.TransformerDecoder(dec_layer, cfg.dec_layers, norm=nn.LayerNorm(cfg.d_model))
        self.head = nn.Linear(cfg.d_model, n_codes)

    # ------------------------------------------------------------------ shared pieces
    def _p(self) -> float:
        return self.cfg.dropout if self.training else 0.0

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, heads, T, D / heads)."""
        b, n, d = t.shape
        return t.reshape(b, n, self.cfg.heads, d // self.cfg.heads).transpose(1, 2)

    def _attend(self, m: nn.MultiheadAttention, q, k, v, mask) -> torch.Tensor:
        """Attention of already projected (B, T, D) q/k/v through ``m``'s output projection."""
        b, n, d = q.shape
        o = nn.functional.scaled_dot_product_attention(
            self._heads(q), self._heads(k), self._heads(v), attn_mask=mask, dropout_p=self._p()
        )
        return m.out_proj(o.transpose(1, 2).reshape(b, n, d))

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        """Inverted dropout whose keep mask comes from 16-bit draws of the seeded global
        generator (keep probability ``1 - p`` to 1/65536). On CPU, ``torch.bernoulli`` draws
        a float per element and was a fifth of a training step; the int16 draw is under half
        of that. Same expectation and variance as ``F.dropout``."""
        p = self._p()
        if p == 0.0:
            return x
        keep = torch.randint(-32768, 32768, x.shape, dtype=torch.int16, device=x.device) >= round(p * 65536) - 32768
        return torch.where(keep, x * (1.0 / (1.0 - p)), 0.0)

    def _ff(self, layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
        return self._drop(layer.linear2(self._drop(nn.functional.relu(layer.linear1(h)))))

    def _embed_src(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if src.dim() == 3:
            pad = (src == PAD).all(-1)
            h = self.embed(src).sum(2)
        else:
            pad = src == PAD
            h = self.embed(src)
        n = h.shape[1]
        if n > self.full_len:
            raise ValueError(f"encoder input has {n} positions, more than the model's {self.full_len}")
        pos = torch.arange(self.full_len - n, self.full_len, device=src.device)  # right-aligned
        return h + self.enc_pos(pos)[None], pad

    # ------------------------------------------------------------------ encoder
    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``src`` is (B, T) flat tokens or (B, H, L) per-item tokens (summed per item).
        Returns (memory (B, T, D), padding mask (B, T), True at padding)."""
        h, pad = self._embed_src(src)
        if not self.cfg.fast:
            return self.encoder(h, src_key_padding_mask=pad), pad
        mask = (~pad)[:, None, None, :]
        for layer in self.encoder.layers:
            a = layer.norm1(h)
            q, k, v = nn.functional.linear(a, layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias).chunk(3, -1)
            h = h + self._drop(self._attend(layer.self_attn, q, k, v, mask))
            h = h + self._ff(layer, layer.norm2(h))
        return self.encoder.norm(h), pad

    # ------------------------------------------------------------------ decoder
    def _cross_kv(self, layer: nn.Module, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = layer.multihead_attn
        d = memory.shape[-1]
        return nn.functional.linear(memory, m.in_proj_weight[d:], m.in_proj_bias[d:]).chunk(2, -1)

    def decode_hidden(self, tgt_in: torch.Tensor, memory: torch.Tensor, mem_pad: torch.Tensor, beams: int = 1):
        """Final decoder states (B, t, D) for ``tgt_in`` (B, beams * n): ``beams`` independent
        sequences of length ``n`` side by side (block-diagonal causal mask)."""
        t = tgt_in.shape[1]
        n = t // beams
        dev = tgt_in.device
        pos = torch.arange(n, device=dev).repeat(beams)
        h = self.embed(tgt_in) + self.dec_pos(pos)[None]
        blk = torch.arange(t, device=dev) // n
        allowed = (blk[:, None] == blk[None, :]) & (pos[None, :] <= pos[:, None])
        if not self.cfg.fast:
            mask = torch.zeros(t, t, device=dev).masked_fill(~allowed, float("-inf"))
            return self.decoder(h, memory, tgt_mask=mask, memory_key_padding_mask=mem_pad)
        mmask = (~mem_pad)[:, None, None, :]
        d = h.shape[-1]
        for layer in self.decoder.layers:
            a = layer.norm1(h)
            sa = layer.self_attn
            q, k, v = nn.functional.linear(a, sa.in_proj_weight, sa.in_proj_bias).chunk(3, -1)
            h = h + self._drop(self._attend(sa, q, k, v, allowed))
            ca = layer.multihead_attn
            q = nn.functional.linear(layer.norm2(h), ca.in_proj_weight[:d], ca.in_proj_bias[:d])
            k, v = self._cross_kv(layer, memory)
            h = h + self._drop(self._attend(ca, q, k, v, mmask))
            h = h + self._ff(layer, layer.norm3(h))
        return self.decoder.norm(h)

    def decode(
        self, tgt_in: torch.Tensor, memory: torch.Tensor, mem_pad: torch.Tensor, beams: int = 1
    ) -> torch.Tensor:
        """Decoder logits over all codes for ``tgt_in`` (B, beams * n) (see :meth:`decode_hidden`)."""
        return self.head(self.decode_hidden(tgt_in, memory, mem_pad, beams))  # (B, t, n_codes)

    def level_logits(self, h: torch.Tensor, offset: int, size: int) -> torch.Tensor:
        """Head logits of one level's codes only: the same numbers as ``head(h)[..., offset:offset + size]``."""
        return nn.functional.linear(h, self.head.weight[offset : offset + size], self.head.bias[offset : offset + size])

    def train_loss(self, src: torch.Tensor, tgt: torch.Tensor, codec: SIDCodec) -> torch.Tensor:
        """Mean cross-entropy of the target SIDs ``tgt`` (B, L, code-space ids), each level a
        softmax over its own codes (teacher forcing)."""
        b = tgt.shape[0]
        tgt_in = torch.cat([torch.full((b, 1), BOS, device=tgt.device, dtype=tgt.dtype), tgt[:, :-1] + N_SPECIAL], 1)
        memory, mem_pad = self.encode(src)
        h = self.decode_hidden(tgt_in, memory, mem_pad)
        if not self.cfg.fast:
            logits = self.head(h) + _level_mask(codec).to(h.device)[None]
            return nn.functional.cross_entropy(logits.reshape(-1, codec.n_codes), tgt.reshape(-1))
        total = h.new_zeros(())
        for lvl in range(codec.levels):
            off, size = int(codec.offsets[lvl]), int(codec.sizes[lvl])
            total = total + nn.functional.cross_entropy(
                self.level_logits(h[:, lvl], off, size).float(), tgt[:, lvl] - off, reduction="sum"
            )
        return total / tgt.numel()


def autocast(cfg: TigerConfig):
    """bfloat16 autocast where ``cfg.bf16`` asks for it; a no-op context otherwise."""
    return torch.autocast(device_type=torch.device(cfg.device).type, dtype=torch.bfloat16, enabled=cfg.bf16)



def _level_mask(codec: SIDCodec) -> torch.Tensor:
    """(L, n_codes) additive mask: 0 inside level l's token range, -inf elsewhere."""
    m = torch.full((codec.levels, codec.n_codes), float("-inf"))
    for lvl in range(codec.levels):
        o = int(codec.offsets[lvl])
        m[lvl, o : o + int(codec.sizes[lvl])] = 0.0
    return m
