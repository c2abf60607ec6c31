"""TIGER's settings: model size, training budget, beam search and the CPU fast paths."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TigerConfig:
    d_model: int = 128
    ff_dim: int = 256
    enc_layers: int = 2
    dec_layers: int = 2
    heads: int = 4
    dropout: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 0.01
    epochs: int = 20
    batch_size: int = 256
    max_history: int = 20
    history_tokens: str = "item"  # "flat": L encoder positions per item; "item": one (summed) per item
    beams: int = 20
    k: int = 10
    patience: int = 3
    user_buckets: int = 0  # TIGER hashes users into 2,000 tokens; 0 leaves the user token out
    eval_batch: int = 256
    max_valid_users: int | None = None  # early-stopping subset (None = every user)
    max_seconds: float | None = None  # training time cap (checked between batches); depends on machine load
    max_steps: int | None = None  # optimiser-step budget across epochs: a cap that reproduces on any machine
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    fast: bool = True  # lean forward + level-sliced head + KV-cached beam search; False = nn.Transformer reference
    length_buckets: int = 16  # sort each run of this many batches by history length (less padding); 0 = plain shuffle
    # bfloat16 autocast of the matrix products in training and beam search (weights, optimiser,
    # losses and beam scores stay float32). Off by default: it changes the numbers, and the
    # real-data tables were measured in float32 (benchmarks/results/speed.md).
    bf16: bool = False

    def __post_init__(self) -> None:
        if self.beams < self.k + 1:
            raise ValueError(f"beams ({self.beams}) must be >= k + 1 ({self.k + 1}) to survive masking")
        if self.d_model % self.heads:
            raise ValueError("d_model must be divisible by heads")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {self.max_steps}")
        if self.length_buckets < 0:
            raise ValueError(f"length_buckets must be >= 0, got {self.length_buckets}")
        if self.history_tokens not in ("flat", "item"):
            raise ValueError(f"history_tokens must be 'flat' or 'item', got {self.history_tokens!r}")
