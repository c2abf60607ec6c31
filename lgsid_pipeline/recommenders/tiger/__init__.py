"""TIGER-style generative recommender over semantic IDs (Rajput et al. 2023).

An encoder-decoder transformer reads the user's history of SID tokens (one token range per
level, plus an optional hashed user token) and generates the next item's SID level by level.
``history_tokens="flat"`` (TIGER) feeds ``L`` encoder positions per item; ``"item"`` sums an
item's ``L`` SID-token embeddings into one encoder position, which cuts encoder cost by ``L``
on CPU while the model still sees only SID tokens (no item-ID embedding). Training uses every next-item prefix of the training
sequences (position ``t``'s target is item ``t``); the validation target drives early
stopping on NDCG@10.

Decoding is constrained beam search through a prefix trie of the catalogue's SIDs, batched
over users (only the per-level loop is in Python). Every generated SID is a real item, and
every item is reachable. The beams of one user are laid side by side in one decoder sequence
with a block-diagonal causal mask, so the encoder memory (and its cross-attention keys and
values) is computed once per user, not once per beam. Masking: the README protocol masks the user's last history item, so
the search keeps ``beams >= K + 1`` beams, drops the masked item from the finished beams and
keeps the best ``K`` of the rest.

Each level's distribution is a softmax over that level's codes only (training and decoding
alike); the trie then removes the codes that lead to no item, without renormalising, as in
TIGER's constrained decoding.

The package: :mod:`.config` (``TigerConfig``), :mod:`.codec` (SID codec, prefix trie and token
tables), :mod:`.model` (the transformer), :mod:`.beam` (constrained beam search and ranking),
:mod:`.train` (training, evaluation entry point, save / load).
"""

from .beam import beam_search, rank_stage, rank_users, recommend_history, topk_frame, trim
from .codec import (BOS, DENSE_TABLE_LIMIT, N_SPECIAL, PAD, SIDCodec, Tokens, history_matrix, sid_codes_for,
                    training_prefixes)
from .config import TigerConfig
from .model import TigerModel, autocast
from .train import (GenResult, epoch_batches, load_tiger, save_tiger, saved_item_ids, seed_all, train_and_evaluate_tiger,
                    train_step, train_tiger)

__all__ = [
    "BOS",
    "DENSE_TABLE_LIMIT",
    "N_SPECIAL",
    "PAD",
    "GenResult",
    "SIDCodec",
    "TigerConfig",
    "TigerModel",
    "Tokens",
    "autocast",
    "beam_search",
    "epoch_batches",
    "history_matrix",
    "load_tiger",
    "rank_stage",
    "rank_users",
    "recommend_history",
    "save_tiger",
    "saved_item_ids",
    "seed_all",
    "sid_codes_for",
    "topk_frame",
    "train_and_evaluate_tiger",
    "train_step",
    "train_tiger",
    "training_prefixes",
    "trim",
]
