"""Harness check of the generative recommender on Amazon Beauty against published TIGER numbers.

Usage:
    .venv/bin/python benchmarks/harness_amazon_beauty.py [--sid letter|rqvae] [--quick]
        [--epochs N] [--max-minutes M] [--seed S] [--data ../shared/data/amazon_beauty]

* ``letter``: the dataset's published LETTER semantic IDs (4 levels); their 13 collisions are
  removed with the project's appended dedup digit (``tokenizers.dedup.append_dedup_level``),
  so every SID has 5 tokens.
* ``rqvae``: this project's RQ-VAE codes of the item names encoded by ``TextEncoder``: TIGER's
  3 levels of 256 (``--rq-sizes``) trained for ``--rq-epochs`` (200: ~2,400 steps of 1,024
  items; 20 epochs leave 7% of the items colliding and the codebooks half used), plus the
  dedup digit. The pipeline's size rule would give 46 per level at 12k items and collide 56%
  of them, so the harness fixes TIGER's sizes.

Split: the README next-item protocol (already 5-core, so ``min_core=0``); full-catalogue
ranking with the user's last history item masked. The baseline measured in the same run is
the last-item transition heuristic (the README notes it alone roughly matches the paper).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lgsid_pipeline.recommenders.data import next_item_split  # noqa: E402
from lgsid_pipeline.recommenders.heuristics import run_heuristic  # noqa: E402
from lgsid_pipeline.recommenders.tiger import TigerConfig, train_and_evaluate_tiger  # noqa: E402
from lgsid_pipeline.tokenizers.dedup import append_dedup_level, n_duplicates  # noqa: E402

PUBLISHED = {"test_hit@5": 0.0454, "test_ndcg@5": 0.0321, "test_hit@10": 0.0648, "test_ndcg@10": 0.0384}


def letter_codes(items: pl.DataFrame) -> np.ndarray:
    """Parse ``<a_183> <b_70> <c_232> <d_6>`` into integer rows."""
    rows = []
    for i, s in enumerate(items["letter_sid"].to_list()):
        try:
            rows.append([int(tok.strip("<>").split("_")[1]) for tok in s.split()])
        except (AttributeError, IndexError, ValueError):
            raise ValueError(f"items row {i}: unparseable letter_sid {s!r}") from None
    return np.asarray(rows, dtype=np.int64)


def rqvae_codes(items: pl.DataFrame, seed: int, sizes: list[int], epochs: int) -> np.ndarray:
    from lgsid_pipeline.alignment.encoder import EncoderConfig, TextEncoder
    from lgsid_pipeline.tokenizers import make_tokenizer

    texts = items["name"].fill_null("").to_list()
    t0 = time.perf_counter()
    emb = TextEncoder(EncoderConfig()).encode(texts)
    print(f"encoded {len(texts)} names in {time.perf_counter() - t0:.0f}s", flush=True)
    tok = make_tokenizer("rqvae", seed=seed, codebook_sizes=sizes, epochs=epochs)
    t0 = time.perf_counter()
    codes = np.asarray(tok.fit(emb).transform(emb), dtype=np.int64)
    print(f"rqvae {sizes} x {epochs} epochs: fit+transform {time.perf_counter() - t0:.0f}s, shape {codes.shape}, "
          f"final recon_mse {tok.history_[-1]['recon_mse']:.4f}", flush=True)
    return codes


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "amazon_beauty"))
    ap.add_argument("--sid", choices=("letter", "rqvae"), default="letter")
    ap.add_argument("--rq-sizes", default="256,256,256", help="RQ-VAE codebook sizes per level")
    ap.add_argument("--rq-epochs", type=int, default=200, help="RQ-VAE training epochs")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--max-minutes", type=float, default=15.0)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--ff-dim", type=int, default=512)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--history-tokens", choices=("flat", "item"), default="item")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--user-buckets", type=int, default=0, help="TIGER hashes users into 2,000 tokens")
    ap.add_argument("--eval-batch", type=int, default=256)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--quick", action="store_true", help="1 epoch, 2,000 users (smoke run)")
    ap.add_argument("--out", default=None, help="write metrics JSON here")
    ap.add_argument("--valid-users", type=int, default=3000, help="users scored for early stopping")
    ap.add_argument("--full-valid", action="store_true", help="also rank the full catalogue for every validation user")
    return ap


def tiger_config(args) -> TigerConfig:
    return TigerConfig(
        d_model=args.d_model,
        ff_dim=args.ff_dim,
        enc_layers=args.layers,
        dec_layers=args.layers,
        heads=args.heads,
        user_buckets=args.user_buckets,
        eval_batch=args.eval_batch,
        device=args.device,
        dropout=0.1,
        lr=args.lr,
        epochs=1 if args.quick else args.epochs,
        batch_size=args.batch_size,
        max_history=20,
        history_tokens=args.history_tokens,
        beams=20,
        patience=3,
        max_valid_users=None if args.quick else args.valid_users,
        max_seconds=args.max_minutes * 60.0,
        seed=args.seed,
        threads=args.threads,
    )


def main() -> None:
    args = parser().parse_args()
    torch.set_num_threads(args.threads)

    items = pl.read_parquet(Path(args.data) / "items.parquet")
    inter = pl.read_parquet(Path(args.data) / "interactions.parquet")
    if args.quick:
        keep = inter["user_id"].unique().sort().head(2000)
        inter = inter.filter(pl.col("user_id").is_in(keep.implode()))
    split = next_item_split(inter, min_core=0, known_items=items["item_id"])
    print("split", split.metadata(), flush=True)

    raw = letter_codes(items) if args.sid == "letter" else rqvae_codes(
        items, args.seed, [int(k) for k in args.rq_sizes.split(",")], args.rq_epochs)
    print(f"{args.sid} SIDs: {raw.shape[1]} levels, {n_duplicates(raw)} duplicates before dedup", flush=True)
    codes = append_dedup_level(raw)
    sids = dict(zip(items["item_id"].to_list(), map(tuple, codes.tolist())))

    base = run_heuristic("transitions", split)
    print("baseline transitions", json.dumps({k: round(v, 4) for k, v in base.metrics.items()}), flush=True)

    cfg = tiger_config(args)
    stages = ("valid", "test") if (args.full_valid or args.quick) else ("test",)
    res = train_and_evaluate_tiger(
        split, sids, cfg, log=lambda r: print("epoch", json.dumps(r), flush=True), stages=stages
    )
    m = {k: round(v, 4) for k, v in res.metrics.items()}
    print("tiger", json.dumps(m), flush=True)
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu x{args.threads} threads"
    print(f"best epoch {res.best_epoch}, wall {res.seconds:.0f}s, cpu {res.cpu_seconds:.0f}s on {where}", flush=True)
    for key, pub in PUBLISHED.items():
        print(
            f"{key}: ours {res.metrics[key]:.4f}  published {pub:.4f}  ratio {res.metrics[key] / pub:.2f}  "
            f"vs transitions {res.metrics[key] / max(base.metrics[key], 1e-12):.2f}",
            flush=True,
        )
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {"args": vars(args), "device": where, "tiger": res.metrics, "transitions": base.metrics, "history": res.history,
                 "best_epoch": res.best_epoch, "seconds": res.seconds, "cpu_seconds": res.cpu_seconds},
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
