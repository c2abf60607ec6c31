"""Peer baselines on the README next-item split, to validate the split implementation.

Usage:
    .venv/bin/python benchmarks/bench_recommenders.py [--quick] [--datasets gowalla_nyc,...]
        [--sasrec-minutes M] [--no-sasrec] [--seed S]

For every dataset: popularity, last-item transitions, geo-nearest (lib code), and SASRec from
the ``cornac`` 3.0.x package (64-d, 2 blocks, CPU, stopped by a wall-clock cap: a lower bound).
SASRec is a benchmark-only dependency (``pip install 'cornac>=3.0,<3.1'``). Reported: validation
and test Hit/NDCG@10, the README reference (test), CPU seconds per variant, and on gowalla_nyc
the test figure with the three airports (LGA, JFK, EWR) excluded from the targets.
Ratios are against popularity measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lgsid_pipeline.recommenders.data import SplitData, item_attribute, next_item_split  # noqa: E402
from lgsid_pipeline.recommenders.heuristics import HEURISTICS, run_heuristic, stage_metrics  # noqa: E402
from lgsid_pipeline.recommenders.metrics import target_ranks, hit_ndcg  # noqa: E402

REFERENCE = {  # README, test split, H@10 / N@10
    "gowalla_nyc": {"popularity": (0.2215, 0.1180), "transitions": (0.2094, 0.1205), "geo_nearest": (0.1052, 0.0565), "sasrec": (0.2051, 0.1263)},
    "yelp_multicity": {"popularity": (0.0150, 0.0091), "transitions": (0.0354, 0.0189), "geo_nearest": (0.0374, 0.0181), "sasrec": (0.0452, 0.0224)},
    "foursquare_nyc": {"popularity": (0.0104, 0.0051), "transitions": (0.5285, 0.3714), "geo_nearest": (0.3316, 0.1969), "sasrec": (0.6995, 0.4200)},
}
# the three airport venues themselves (18.5% of gowalla_nyc test targets per the README)
AIRPORT_PATTERN = r"^(LGA LaGuardia Airport|JFK John F\. Kennedy International|EWR Newark Liberty International)$"


def airport_items(split: SplitData, items: pl.DataFrame) -> np.ndarray:
    """Item indices of the three NYC airport venues (LGA, JFK, EWR)."""
    names = item_attribute(split, items, "name")
    s = pl.Series([n if isinstance(n, str) else "" for n in names])
    hit = s.str.contains(AIRPORT_PATTERN).to_numpy()
    return np.flatnonzero(hit)


def sasrec_topk(split: SplitData, minutes: float, seed: int, k: int = 10) -> tuple[dict, float, int]:
    """Train cornac's SASRec (64-d, 2 blocks) on the training sequences under a wall-clock cap.

    The epoch loop mirrors ``cornac.models.SASRec.fit`` (same model, iterator and loss) but checks
    the cap between batches. Returns ({stage: topk}, cpu seconds, batches trained).
    """
    import torch
    from cornac.data import SequentialDataset
    from cornac.models import SASRec
    from cornac.models.sasrec.sasrec import SASRecModel
    from cornac.models.seq_utils import session_seq_iter
    from cornac.models.seq_utils.losses import get_loss_function

    c0, w0 = time.process_time(), time.perf_counter()
    rows = []
    for u, seq in enumerate(split.train_seqs):
        for t, it in enumerate(seq):
            rows.append((str(u), str(u), str(int(it)), t))
    train_set = SequentialDataset.from_usit(rows, seed=seed)
    rec = SASRec(embedding_dim=64, num_blocks=2, num_heads=1, max_len=50, batch_size=256, n_sample=2048, seed=seed)
    torch.manual_seed(seed)
    w0 = time.perf_counter()  # the cap counts training only
    n_items = train_set.num_items
    pad = n_items
    model = SASRecModel(item_num=n_items, embedding_dim=64, maxlen=50, n_layers=2, n_heads=1, use_pos_emb=True,
                        use_biases=False, dropout=0.2, pad_idx=pad, device="cpu")
    loss_fn = get_loss_function("ce")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98))
    rng = np.random.RandomState(seed)
    cap = minutes * 60.0
    batches = 0
    done = False
    while not done:
        model.train()
        for _, hist, out in session_seq_iter(train_set, pad_index=pad, batch_size=rec.batch_size, max_len=50,
                                             n_sample=rec.n_sample, sample_alpha=rec.sample_alpha, rng=rng, shuffle=True):
            if len(hist) < 2:
                continue
            h = torch.tensor(hist, dtype=torch.long)
            o = torch.tensor(out, dtype=torch.long)
            model.zero_grad()
            loss = loss_fn(model(None, h, o), out_iids=o, batch_size=len(hist), bpreg=1.0, elu_param=0.5, n_sample=rec.n_sample)
            loss.backward()
            opt.step()
            batches += 1
            if time.perf_counter() - w0 > cap:
                done = True
                break
    model.eval()
    iid_map = train_set.iid_map  # our item index (as str) -> cornac index
    to_ours = np.full(n_items, -1, dtype=np.int64)
    for ours, theirs in iid_map.items():
        to_ours[theirs] = int(ours)
    ours_to_theirs = np.full(split.n_items, pad, dtype=np.int64)
    ours_to_theirs[to_ours[to_ours >= 0]] = np.flatnonzero(to_ours >= 0)
    topk = {}
    with torch.no_grad():
        for stage in ("valid", "test"):
            hist = split.history(stage)
            masked = split.last_item(stage)
            seqs = np.full((split.n_users, 50), pad, dtype=np.int64)
            for u, h in enumerate(hist):
                t = ours_to_theirs[h[-50:]]
                seqs[u, 50 - t.size :] = t
            out = np.empty((split.n_users, k), dtype=np.int64)
            for s in range(0, split.n_users, 512):
                hidden = model._encode(torch.from_numpy(seqs[s : s + 512]))
                sc = model._score_items(hidden, model.item_emb(torch.arange(n_items)), None).reshape(-1, n_items).numpy().copy()
                m = ours_to_theirs[masked[s : s + 512]]
                ok = m < n_items
                sc[np.flatnonzero(ok), m[ok]] = -np.inf
                top = np.argsort(-sc, axis=1)[:, :k]
                out[s : s + 512] = to_ours[top]
            topk[stage] = out
    return topk, time.process_time() - c0, batches


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--datasets", default="gowalla_nyc,yelp_multicity,foursquare_nyc")
    ap.add_argument("--sasrec-minutes", type=float, default=3.0)
    ap.add_argument("--no-sasrec", action="store_true")
    ap.add_argument("--quick", action="store_true", help="foursquare_nyc only, SASRec capped at 0.5 min")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    datasets = ["foursquare_nyc"] if args.quick else args.datasets.split(",")
    minutes = 0.5 if args.quick else args.sasrec_minutes
    for name in datasets:
        items = pl.read_parquet(Path(args.data) / name / "items.parquet")
        inter = pl.read_parquet(Path(args.data) / name / "interactions.parquet")
        t0 = time.process_time()
        split = next_item_split(inter, known_items=items["item_id"])
        split_cpu = time.process_time() - t0
        meta = split.metadata()
        print(f"\n## {name}: {meta['users']} users / {meta['items']} items (order={meta['order']}, "
              f"dropped unknown {meta['dropped_unknown_items']}, split {split_cpu:.2f}s CPU)")
        lat, lon = item_attribute(split, items, "lat"), item_attribute(split, items, "lon")
        results = {h: run_heuristic(h, split, item_lat=lat, item_lon=lon) for h in HEURISTICS}
        rows = {h: (r.topk, r.seconds, None) for h, r in results.items()}
        if not args.no_sasrec:
            try:
                tk, secs, batches = sasrec_topk(split, minutes, args.seed)
                rows["sasrec"] = (tk, secs, batches)
            except ImportError as exc:
                print(f"(SASRec skipped: {exc})")
        airports = airport_items(split, items) if name == "gowalla_nyc" else None
        if airports is not None:
            share = np.isin(split.test_target, airports).mean()
            print(f"airport items: {airports.size}; share of test targets: {share:.3f}")
        pop_n10 = stage_metrics(split, rows["popularity"][0])["test_ndcg@10"]
        print("| variant | valid H@10 | valid N@10 | test H@10 | test N@10 | README test H@10 / N@10 | test N@10 / popularity | "
              + ("test H@10 / N@10 w/o airports | " if airports is not None else "") + "CPU s |")
        print("|---|---|---|---|---|---|---|" + ("---|" if airports is not None else "") + "---|")
        for v, (tk, secs, batches) in rows.items():
            m = stage_metrics(split, tk)
            ref = REFERENCE.get(name, {}).get(v)
            ref_s = f"{ref[0]:.4f} / {ref[1]:.4f}" if ref else "-"
            extra = ""
            if airports is not None:
                keep = ~np.isin(split.test_target, airports)
                ex = hit_ndcg(target_ranks(tk["test"][keep], split.test_target[keep]))
                extra = f" {ex['hit@10']:.4f} / {ex['ndcg@10']:.4f} |"
            label = v if batches is None else f"{v} ({batches} batches, {minutes:g} min cap)"
            print(f"| {label} | {m['valid_hit@10']:.4f} | {m['valid_ndcg@10']:.4f} | {m['test_hit@10']:.4f} | "
                  f"{m['test_ndcg@10']:.4f} | {ref_s} | {m['test_ndcg@10'] / max(pop_n10, 1e-12):.2f} |{extra} {secs:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
