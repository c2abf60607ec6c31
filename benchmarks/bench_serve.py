"""Loopback load test of ``lgsid serve``: requests/s and latency quantiles, bounded in time.

Builds an export the size of gowalla_nyc's catalogue (30k items, 3 methods, 7k cached users
with 10 items each; synthetic codes, so nothing from ../shared is needed), starts
``lgsid serve --export`` as a real process on 127.0.0.1 and drives it for ``--seconds``
(at most 30) with ``--clients`` concurrent keep-alive clients, mixing the endpoints a serving
system calls: 60% ``/items/{id}``, 30% ``/users/{id}/topk``, 10% ``/sids/{prefix}``, of which
5% are unknown ids (404s).

    .venv/bin/python benchmarks/bench_serve.py --seconds 20 --clients 8 --out benchmarks/results/speed/serve.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lgsid_pipeline.serving.index import export_tables  # noqa: E402


def synthetic_export(to: Path, n_items: int, n_users: int, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    rng = np.random.default_rng(seed)
    ids = [f"i{i}" for i in range(n_items)]
    frames = []
    for m in ("lgsid", "res_kmeans", "rqvae"):
        codes = np.column_stack([rng.integers(0, 256, n_items) for _ in range(3)] + [np.zeros(n_items, int)])
        frames.append(pl.DataFrame({"item_id": ids, "method": m, "sid": codes.tolist(), "codebook_version": "v1",
                                    "city_key": rng.choice(["a", "b", "c"], n_items).tolist()}))
    sids = pl.concat(frames)
    items = pl.DataFrame({"item_id": ids, "name": [f"venue {i}" for i in range(n_items)],
                          "lat": 40.7 + rng.normal(0, 0.1, n_items), "lon": -74.0 + rng.normal(0, 0.1, n_items)})
    users = [f"u{u}" for u in range(n_users)]
    pick = rng.integers(0, n_items, (n_users, 10))
    topk = pl.DataFrame({"user_id": np.repeat(users, 10).tolist(), "rank": np.tile(np.arange(1, 11), n_users),
                         "item_id": [ids[i] for i in pick.ravel()], "sid": [[0, 0, 0, 0]] * (n_users * 10),
                         "score": rng.normal(size=n_users * 10), "city_key": "a"})
    manifest = {"version": "v1", "variants": {m: {"embedding_variant": "origin", "encoder_version": "synthetic"}
                                              for m in ("lgsid", "res_kmeans", "rqvae")}}
    export_tables(to, sids, items, manifest, topk)
    prefixes = sorted({f"{a}/{b}" for a, b in sids.filter(pl.col("method") == "lgsid")["sid"].list.head(2).to_list()})
    return ids, users, prefixes


async def drive(base: str, seconds: float, clients: int, ids, users, prefixes, seed: int = 0) -> dict:
    import httpx

    lat: list[float] = []
    codes: dict[int, int] = {}
    stop = time.perf_counter() + seconds

    async def one(c: int) -> None:
        rng = np.random.default_rng(seed + c)
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            while time.perf_counter() < stop:
                r = rng.random()
                bad = rng.random() < 0.05
                if r < 0.6:
                    path = f"/items/{'nope' if bad else ids[rng.integers(len(ids))]}"
                elif r < 0.9:
                    path = f"/users/{'nobody' if bad else users[rng.integers(len(users))]}/topk"
                else:
                    path = f"/sids/{prefixes[rng.integers(len(prefixes))]}"
                t0 = time.perf_counter()
                resp = await client.get(path)
                lat.append(time.perf_counter() - t0)
                codes[resp.status_code] = codes.get(resp.status_code, 0) + 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one(c) for c in range(clients)))
    wall = time.perf_counter() - t0
    ms = np.asarray(lat) * 1000
    return {"requests": len(lat), "seconds": wall, "requests_per_s": len(lat) / wall,
            "latency_ms": {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
                           "p99": float(np.percentile(ms, 99)), "max": float(ms.max())},
            "status_codes": {str(k): v for k, v in sorted(codes.items())}}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--items", type=int, default=30_000)
    ap.add_argument("--users", type=int, default=7_000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if not 0 < args.seconds <= 30:
        raise SystemExit("error: --seconds must be in (0, 30]: the load test is bounded")
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "export"
        t0 = time.perf_counter()
        ids, users, prefixes = synthetic_export(export, args.items, args.users)
        export_s = time.perf_counter() - t0
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "orchestration.cli", "serve", "--export", str(export),
                                 "--port", str(port), "--log-level", "warning"], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            import httpx

            t0 = time.perf_counter()
            while True:
                try:
                    httpx.get(f"{base}/healthz", timeout=2)
                    break
                except httpx.HTTPError:
                    if proc.poll() is not None or time.perf_counter() - t0 > 120:
                        raise SystemExit("error: lgsid serve did not start") from None
                    time.sleep(0.2)
            startup_s = time.perf_counter() - t0
            load = [os.getloadavg()[0]]
            res = asyncio.run(drive(base, args.seconds, args.clients, ids, users, prefixes))
            load.append(os.getloadavg()[0])
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    out = {"command": " ".join(["benchmarks/bench_serve.py", *(argv if argv is not None else sys.argv[1:])]),
           "items": args.items, "users": args.users, "clients": args.clients, "export_seconds": export_s,
           "startup_seconds": startup_s, "load_avg_before_after": load, "cores": os.cpu_count(), **res}
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
