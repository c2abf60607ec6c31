"""HGIT: Hierarchical Geographic Item Tokenization (paper Eq. 9-16).

Layer 1 (Eq. 9): a clustering feature ``F`` built from geography, administrative area,
category and brand; MiniBatch k-means over ``F`` gives the first token and the first-layer
centres are the mean LLM embedding of each token's items.
Layers l >= 2 (Eq. 10-12): learnable centres with Euclidean assignment on the residuals,
trained on Eq. 13 reconstruction + the usage regulariser of Eq. 14-16.

Readings of the paper (it leaves these open):

* "Composite embeddings ... fixed scaling factors" for categorical ids: every id gets a fixed,
  seeded pseudo-random unit vector of ``cat_embed_dim`` dimensions derived from a stable hash
  of the (hierarchical) value, never a one-hot. Hierarchies are composed by summing the
  codes of their prefixes: ``f_admin = (e(prov) + e(prov/city) + e(prov/city/district)) / sqrt 3``
  and ``f_cat = (e(cat1) + e(cat1/cat2)) / sqrt 2``; the admin hierarchy also takes ``town``
  (``admin_columns``), the nearest populated place of the shared datasets: without it a
  label that splits one place in two (gowalla's "New York City" / "New York County") is the
  finest admin signal, and district is mostly null; so items that share a province are closer
  than unrelated ones and items that share a city closer still. Unseen ids at transform time
  get their own code (the hash needs no vocabulary). A null id contributes a zero vector, so a
  column that is entirely null simply drops out of ``F``.
* ``f_geo``: latitude/longitude as 3-D unit vectors, centred and divided by their RMS spread
  over the fitted catalogue, so ``E|f_geo|^2 = 1`` like the unit-norm categorical codes and the
  weights ``w_*`` express relative importance directly.
* Eq. 14 counts hard assignments and has no gradient. The regulariser uses the soft usage
  ``p_k = mean_i softmax_k(-|R_i - mu_k|^2 / (tau * mean_i min_k |R_i - mu_k|^2))``: the
  temperature ``tau = usage_temperature`` is in units of the typical quantisation error, so soft
  mass only leaks to near-by centres. The hard usage of Eq. 14 is what diagnostics report.
  A high temperature (tau >= 3 in our tests) lets the regulariser reach a uniform *soft* usage
  by making every assignment fuzzy, which lowers the hard-usage perplexity; tau = 0.3 raises it.
* Eq. 13 is used as the per-item mean of ``|X - sum_l Q(l)|^2`` divided by the total variance of
  ``X`` (a positive constant, so the minimiser is unchanged and ``lambda_reg`` is scale-free).
  Its gradient w.r.t. a centre through the hard assignment is the standard codebook update:
  each centre moves toward the mean reconstruction error of the items assigned to it.
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from lgsid_pipeline.geo import out_of_range
from lgsid_pipeline.geo import unit_vectors as geo_unit_vectors
from lgsid_pipeline.tokenizers.base import SemanticIdTokenizer, check_embeddings, check_items
from lgsid_pipeline.tokenizers.codebook_io import require_tensors
# the Eq. 10-16 training terms; imported here so ``hgit.hgit_loss`` etc. stay where they were
from lgsid_pipeline.tokenizers.hgit_loss import hgit_loss, quantise_residual, usage_kl
from lgsid_pipeline.tokenizers.kmeans import (fit_kmeans, group_means, nearest_centre, residual_kmeans, residual_step,
                                              sq_distances)

ADMIN_COLUMNS = ("province", "city", "district", "town")
# Codebooks saved before ``admin_columns`` existed were fitted on these (no ``town``).
LEGACY_ADMIN_COLUMNS = ("province", "city", "district")
CATEGORY_COLUMNS = ("cat1", "cat2")
BRAND_COLUMNS = ("brand",)


# --- Eq. 9 building blocks ------------------------------------------------------------------
def _string_column(items: pl.DataFrame, col: str) -> pl.Series:
    if col not in items.columns:
        return pl.Series(col, [None] * items.height, dtype=pl.Utf8)
    s = items[col]
    return s if s.dtype == pl.Utf8 else s.cast(pl.Utf8, strict=False)


def hashed_codes(values: pl.Series, field: str, dim: int, seed: int) -> np.ndarray:
    """Fixed unit vector per distinct value (stable blake2b hash of ``seed/field/value``);
    null values give zero rows. Hashes once per distinct value, vectorised over items."""
    if not 1 <= dim <= 32:
        raise ValueError(f"cat_embed_dim must be in [1, 32], got {dim}")
    out = np.zeros((values.len(), dim), dtype=np.float32)
    mask = values.is_not_null().to_numpy()
    if not mask.any():
        return out
    uniq, inverse = np.unique(values.filter(values.is_not_null()).to_numpy().astype(str), return_inverse=True)
    table = np.empty((len(uniq), dim), dtype=np.float32)
    for j, v in enumerate(uniq):  # one hash per distinct id, not per item
        h = hashlib.blake2b(f"{seed}\x1f{field}\x1f{v}".encode(), digest_size=2 * dim).digest()
        table[j] = np.frombuffer(h, dtype="<u2").astype(np.float32) - 32767.5
    table /= np.linalg.norm(table, axis=1, keepdims=True).clip(1e-6)
    out[mask] = table[inverse.ravel()]
    return out


def hierarchical_codes(items: pl.DataFrame, columns: tuple[str, ...], dim: int, seed: int) -> np.ndarray:
    """Composite code of a hierarchy: mean-square-normalised sum of the codes of each prefix."""
    parts = [_string_column(items, c) for c in columns]
    total = np.zeros((items.height, dim), dtype=np.float32)
    prefix = pl.Series("p", [""] * items.height, dtype=pl.Utf8)
    for col, s in zip(columns, parts):
        prefix = (prefix + "\x1e" + s.fill_null("")).alias("p")
        key = prefix.zip_with(s.is_not_null(), pl.Series("p", [None] * items.height, dtype=pl.Utf8))
        total += hashed_codes(key, col, dim, seed)
    return total / math.sqrt(len(columns))


def item_lat_lon(items: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(lat, lon, ok)`` of the items as float64 (0 where missing) and the mask of rows that
    have both; a coordinate outside [-90, 90] x [-180, 180] is an error naming its row."""
    n = items.height
    if "lat" not in items.columns or "lon" not in items.columns:
        return np.zeros(n), np.zeros(n), np.zeros(n, dtype=bool)
    lat = items["lat"].cast(pl.Float64, strict=False).to_numpy().astype(np.float64)
    lon = items["lon"].cast(pl.Float64, strict=False).to_numpy().astype(np.float64)
    ok = np.isfinite(lat) & np.isfinite(lon)
    bad = ok & out_of_range(lat, lon)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise ValueError(f"items row {r}: lat={lat[r]}, lon={lon[r]} is outside [-90, 90] x [-180, 180]")
    return np.where(ok, lat, 0.0), np.where(ok, lon, 0.0), ok


def unit_vectors(items: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Latitude/longitude as 3-D unit vectors ``(N, 3)`` (``lgsid_pipeline.geo.unit_vectors``;
    zero rows where a coordinate is missing) and the mask of rows that have both."""
    lat, lon, ok = item_lat_lon(items)
    u = geo_unit_vectors(lat, lon)
    u[~ok] = 0.0
    return u, ok


def geo_normaliser(items: pl.DataFrame) -> tuple[np.ndarray, float]:
    """Mean and RMS spread of the items' location unit vectors (``f_geo``'s centring)."""
    u, ok = unit_vectors(items)
    geo_mean = u[ok].mean(0) if ok.any() else np.zeros(3)
    spread = float(np.sqrt(((u[ok] - geo_mean) ** 2).sum(1).mean())) if ok.any() else 0.0
    return geo_mean, (spread if spread > 1e-12 else 1.0)


def _mean_sq_norm(A: np.ndarray) -> float:
    """mean_i |A_i|^2 in float64, block by block (no full-size temporaries)."""
    total = 0.0
    for s in range(0, A.shape[0], 65_536):
        b = A[s : s + 65_536].astype(np.float64)
        total += float((b * b).sum())
    return total / max(1, A.shape[0])


class HGITTokenizer(SemanticIdTokenizer):
    """Hierarchical Geographic Item Tokenization (LGSID, Eq. 9-16).

    Parameters: ``codebook_sizes`` per level (None: ``default_codebook_sizes``), ``levels``,
    ``seed``; Eq. 9 weights ``w_admin, w_geo, w_cat, w_brand`` and ``cat_embed_dim`` (8, as the
    paper's per-feature embedding size); Eq. 16 ``lambda_reg`` and ``usage_temperature``; Adam
    training of the residual centres: ``epochs``, ``batch_size``, ``lr`` (relative to the RMS
    coordinate of X) and ``max_steps``, a cap on the Adam steps over all epochs (default 128:
    five passes over 100k items at batch 4,096; about half a pass at 1M, where more passes
    only cost time: the regulariser acts per step, and the k-means start is already close to
    the reconstruction optimum; None = ``epochs`` full passes); ``kmeans_max_samples`` caps the rows each k-means is fitted on (layer 1:
    scikit-learn MiniBatchKMeans with ``kmeans_n_init`` restarts; residual initialisation:
    seeded k-means++ / Lloyd).
    """

    method = "hgit"
    _needs_items = True

    def __init__(
        self,
        codebook_sizes: list[int] | None = None,
        levels: int = 3,
        seed: int = 0,
        w_admin: float = 1.0,
        w_geo: float = 1.0,
        w_cat: float = 0.5,
        w_brand: float = 0.25,
        cat_embed_dim: int = 8,
        lambda_reg: float = 0.1,
        usage_temperature: float = 0.3,
        epochs: int = 5,
        batch_size: int = 4096,
        lr: float = 0.001,
        max_steps: int | None = 128,
        kmeans_max_samples: int | None = 131_072,
        kmeans_n_init: int = 3,
        admin_columns: list[str] | None = None,
    ) -> None:
        self.codebook_sizes = codebook_sizes
        self.admin_columns = admin_columns
        self.levels = levels
        self.seed = seed
        self.w_admin = w_admin
        self.w_geo = w_geo
        self.w_cat = w_cat
        self.w_brand = w_brand
        self.cat_embed_dim = cat_embed_dim
        self.lambda_reg = lambda_reg
        self.usage_temperature = usage_temperature
        self.epochs = epochs
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.lr = lr
        self.kmeans_max_samples = kmeans_max_samples
        self.kmeans_n_init = kmeans_n_init

    # --- Eq. 9: first-layer clustering feature ----------------------------------------------
    def clustering_features(self, items: pl.DataFrame) -> np.ndarray:
        """Eq. 9: F = [w_admin f_admin, w_geo f_geo, w_cat f_cat, w_brand f_brand] ``(N, 3 + 3*D)``."""
        self._check_fitted()
        return self._features(items, self.geo_mean_, self.geo_scale_)

    def _admin(self) -> tuple[str, ...]:
        fitted = getattr(self, "admin_columns_", None)
        if fitted is not None:
            return tuple(fitted)
        return tuple(self.admin_columns) if self.admin_columns is not None else ADMIN_COLUMNS

    def _features(self, items: pl.DataFrame, geo_mean: np.ndarray, geo_scale: float,
                  content: bool = True) -> np.ndarray:
        """Eq. 9's weighted concatenation; ``content=False`` keeps only the admin and geo blocks."""
        D = self.cat_embed_dim
        u, ok = unit_vectors(items)
        f_geo = np.where(ok[:, None], (u - geo_mean) / geo_scale, 0.0).astype(np.float32)
        blocks = [self.w_admin * hierarchical_codes(items, self._admin(), D, self.seed), self.w_geo * f_geo]
        if content:
            blocks += [self.w_cat * hierarchical_codes(items, CATEGORY_COLUMNS, D, self.seed),
                       self.w_brand * hierarchical_codes(items, BRAND_COLUMNS, D, self.seed)]
        # Eq. 9: weighted concatenation
        return np.concatenate(blocks, axis=1).astype(np.float32)

    # --- fit ----------------------------------------------------------------------------------
    def _start_fit(self, X, items, who: str):
        """Checked inputs, start time, resolved sizes and the geo normaliser; fixes the admin
        columns this fit uses."""
        X = check_embeddings(X)
        items = check_items(items, X.shape[0], True, who)
        t0 = time.perf_counter()
        self.admin_columns_ = None
        self.admin_columns_ = list(self._admin())
        return X, items, t0, self._resolve_sizes(X.shape[0]), geo_normaliser(items)

    def fit(self, X: np.ndarray, items: pl.DataFrame | None = None) -> "HGITTokenizer":
        X, items, t0, sizes, (geo_mean, geo_scale) = self._start_fit(X, items, "HGIT")
        n, d = X.shape
        F = self._features(items, geo_mean, geo_scale)
        if not np.any(F):
            raise ValueError(
                "HGIT layer 1 needs geography (lat/lon), admin (province/city/district), category "
                "(cat1/cat2) or brand; every one of them is null in items (or its weight is 0)"
            )
        # Layer 1: MiniBatch k-means over F, then mu(1) = mean LLM embedding per token.
        F_centres = fit_kmeans(F, sizes[0], seed=self.seed, max_samples=self.kmeans_max_samples,
                               algorithm="minibatch", n_init=self.kmeans_n_init)
        z1, _ = nearest_centre(F, F_centres)
        mu1 = group_means(X, z1, F_centres.shape[0])

        # Layers >= 2: k-means initialisation on the residuals (Eq. 10-12, seeded per level).
        _, R = residual_step(X.copy(), mu1, z1)
        more, R = residual_kmeans(R, sizes, range(1, self.levels), seed=self.seed, max_samples=self.kmeans_max_samples)
        centres = [mu1] + more
        init_mse = _mean_sq_norm(R)
        del R

        self.layer1_feature_centres_ = F_centres
        self.geo_mean_ = np.asarray(geo_mean, dtype=np.float64)
        self.geo_scale_ = float(geo_scale)
        self.dim_ = int(d)
        self.history_ = [{"epoch": 0, "seconds": time.perf_counter() - t0, "recon_mse": init_mse}]
        self.centres_ = centres
        self.codebook_sizes_ = [int(c.shape[0]) for c in centres]
        if self.levels > 1 and self.epochs > 0:
            self._train_residual_centres(X, z1, t0)
        # final assignments of the fitted rows: z1 from F, then Eq. 10-12 with the trained centres
        codes = np.empty((n, self.levels), dtype=np.int32)
        codes[:, 0] = z1
        _, R = residual_step(X.copy(), self.centres_[0], z1)
        for level in range(1, self.levels):
            codes[:, level], R = residual_step(R, self.centres_[level])
        self.codes_ = codes
        return self

    # --- Eq. 13-16: training of the learnable residual centres ---------------------------------
    def _train_residual_centres(self, X: np.ndarray, z1: np.ndarray, t0: float) -> None:
        g = torch.Generator().manual_seed(int(self.seed))
        Xt = torch.from_numpy(X)
        mu1 = torch.from_numpy(self.centres_[0])
        z1t = torch.from_numpy(np.asarray(z1, dtype=np.int64))
        mean_sq = _mean_sq_norm(X)
        total_var = (mean_sq - float((X.mean(0, dtype=np.float64) ** 2).sum())) or 1.0
        rms = float(np.sqrt(mean_sq / X.shape[1])) or 1.0
        params = [torch.nn.Parameter(torch.from_numpy(c.copy())) for c in self.centres_[1:]]
        opt = torch.optim.Adam(params, lr=self.lr * rms)
        n = X.shape[0]
        bs = int(min(self.batch_size, n))
        step = 0
        for epoch in range(1, self.epochs + 1):
            perm = torch.randperm(n, generator=g)
            counts = [torch.zeros(p.shape[0], dtype=torch.long) for p in params]
            sse, seen = 0.0, 0
            last: list[tuple[torch.Tensor, torch.Tensor]] = []
            for s in range(0, n, bs):
                if self.max_steps is not None and step >= self.max_steps:
                    break
                step += 1
                idx = perm[s : s + bs]
                xb = Xt[idx]
                q1 = mu1[z1t[idx]]
                R = xb - q1  # R(1) after the fixed geographic layer
                recon = q1
                reg = xb.new_zeros(())
                last = []
                for j, mu in enumerate(params):
                    d2, z, Q, R_next = quantise_residual(R, mu)  # Eq. 10-12
                    if self.lambda_reg > 0:
                        reg = reg + usage_kl(d2, self.usage_temperature)  # Eq. 14-15
                    last.append((R.detach(), R_next.detach()))
                    R = R_next
                    recon = recon + Q
                    counts[j] += torch.bincount(z, minlength=mu.shape[0])
                loss, err = hgit_loss(xb, recon, total_var, self.lambda_reg, reg)  # Eq. 13, 16
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sse += float(err.detach().sum())
                seen += xb.shape[0]
            if seen == 0:
                break
            self._reseed_dead(params, counts, last, opt)
            self.history_.append({"epoch": epoch, "steps": step, "seconds": time.perf_counter() - t0,
                                  "recon_mse": sse / seen})
            if self.max_steps is not None and step >= self.max_steps:
                break
        self.centres_ = [self.centres_[0]] + [p.detach().numpy().copy() for p in params]

    @torch.no_grad()
    def _reseed_dead(self, params, counts, last, opt) -> None:
        """Centres unused for a whole epoch move onto the last batch's residual inputs whose
        reconstruction error at that level is largest; their Adam moments are cleared."""
        for j, (mu, cnt) in enumerate(zip(params, counts)):
            dead = torch.nonzero(cnt == 0).flatten()
            if dead.numel() == 0:
                continue
            r_in, r_out = last[j]
            worst = torch.argsort((r_out**2).sum(1), descending=True)[: dead.numel()]
            dead = dead[: worst.numel()]
            mu[dead] = r_in[worst]
            state = opt.state.get(mu, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][dead] = 0.0

    # --- assignment ---------------------------------------------------------------------------
    def _first_level_codes(self, X: np.ndarray, items: pl.DataFrame | None) -> np.ndarray:
        """Layer-1 token: nearest MiniBatch k-means centre of the Eq. 9 feature F."""
        z, _ = nearest_centre(self.clustering_features(items), self.layer1_feature_centres_)
        return z

    @torch.no_grad()
    def level_distances(self, X: np.ndarray, items: pl.DataFrame | None, codes: np.ndarray, level: int) -> np.ndarray:
        if level > 0:
            return super().level_distances(X, items, codes, level)
        self._check_fitted()
        items = check_items(items, np.asarray(X).shape[0], True, "HGIT")
        F = torch.from_numpy(self.clustering_features(items))
        C = torch.from_numpy(self.layer1_feature_centres_)
        out = np.empty((F.shape[0], C.shape[0]), dtype=np.float32)
        for s in range(0, F.shape[0], 8192):
            out[s : s + 8192] = sq_distances(F[s : s + 8192], C).numpy()
        return out

    # --- persistence --------------------------------------------------------------------------
    def _state_tensors(self) -> dict[str, Any]:
        return {**super()._state_tensors(), "layer1_feature_centres": self.layer1_feature_centres_,
                "geo_mean": self.geo_mean_}

    def _fitted_config(self) -> dict[str, Any]:
        return {"geo_scale_": self.geo_scale_, "admin_columns_": list(self._admin())}

    def _set_state(self, tensors: dict[str, torch.Tensor], fitted: dict[str, Any], where: Path) -> None:
        names = [f"centres_{i}" for i in range(self.levels)] + ["layer1_feature_centres", "geo_mean"]
        require_tensors(tensors, names, where)
        self.centres_ = [tensors[f"centres_{i}"].numpy().astype(np.float32) for i in range(self.levels)]
        self.layer1_feature_centres_ = tensors["layer1_feature_centres"].numpy().astype(np.float32)
        self.geo_mean_ = tensors["geo_mean"].numpy().astype(np.float64)
        self.geo_scale_ = float(fitted["geo_scale_"])
        self.admin_columns_ = list(fitted.get("admin_columns_", LEGACY_ADMIN_COLUMNS))
        self.history_ = []


class HGITGeoLastTokenizer(HGITTokenizer):
    """An HGIT variant with the geography at the end: content levels first, then a
    geographic last level.

    Levels 1..L-1 quantise the LLM embedding (seeded k-means on X and on its residuals,
    Eq. 10-12, as HGIT's residual levels are initialised); the last level is a geographic cell:
    MiniBatch k-means over the admin and geo blocks of Eq. 9 (``w_admin f_admin, w_geo f_geo``;
    the category and brand blocks are left out, the content levels carry them). The cells are
    global, so one last-level token means one area in every prefix and TIGER learns one
    embedding for it; within a content prefix the last token splits the items by place. Its
    centre in embedding space is the mean residual of the cell's items, so ``reconstruct``
    and the diagnostics compare with the other methods. Why: the paper's geography-first
    order makes the beam commit to one area at its first step; on gowalla_nyc the test target
    shares the last item's first-level cell only 29% of the time. Here the beam chooses what
    first and where last. The Eq. 13-16 training of HGIT's residual centres is not applied.
    """

    method = "hgit_geo_last"

    def fit(self, X: np.ndarray, items: pl.DataFrame | None = None) -> "HGITGeoLastTokenizer":
        X, items, t0, sizes, (geo_mean, geo_scale) = self._start_fit(X, items, "HGIT (geo last)")
        n, d = X.shape
        G = self._features(items, geo_mean, geo_scale, content=False)
        if not np.any(G):
            raise ValueError("HGIT (geo last) needs lat/lon or admin columns (province/city/district/town); "
                             "every one of them is null in items (or w_geo and w_admin are 0)")
        codes = np.empty((n, self.levels), dtype=np.int32)
        centres, R = residual_kmeans(X.copy(), sizes, range(self.levels - 1), seed=self.seed,  # Eq. 10-12
                                     max_samples=self.kmeans_max_samples, codes=codes)
        G_centres = fit_kmeans(G, sizes[-1], seed=self.seed + self.levels - 1, max_samples=self.kmeans_max_samples,
                               algorithm="minibatch", n_init=self.kmeans_n_init)
        zg, _ = nearest_centre(G, G_centres)
        centres.append(group_means(R, zg, G_centres.shape[0]))
        _, R = residual_step(R, centres[-1], zg)
        codes[:, -1] = zg
        self.layer1_feature_centres_ = G_centres  # the geographic level's feature centres
        self.geo_mean_ = np.asarray(geo_mean, dtype=np.float64)
        self.geo_scale_ = float(geo_scale)
        self.dim_ = int(d)
        self.centres_ = centres
        self.codebook_sizes_ = [int(c.shape[0]) for c in centres]
        self.codes_ = codes
        self.history_ = [{"epoch": 0, "seconds": time.perf_counter() - t0, "recon_mse": _mean_sq_norm(R)}]
        return self

    def geo_features(self, items: pl.DataFrame) -> np.ndarray:
        self._check_fitted()
        return self._features(items, self.geo_mean_, self.geo_scale_, content=False)

    def _first_level_codes(self, X: np.ndarray, items: pl.DataFrame | None) -> None:
        return None

    def _fixed_level_codes(self, X: np.ndarray, items: pl.DataFrame | None) -> dict[int, np.ndarray]:
        z, _ = nearest_centre(self.geo_features(items), self.layer1_feature_centres_)
        return {self.levels - 1: z}

    @torch.no_grad()
    def level_distances(self, X: np.ndarray, items: pl.DataFrame | None, codes: np.ndarray, level: int) -> np.ndarray:
        if level != self.levels - 1:
            return SemanticIdTokenizer.level_distances(self, X, items, codes, level)
        self._check_fitted()
        items = check_items(items, np.asarray(X).shape[0], True, "HGIT (geo last)")
        return sq_distances(torch.from_numpy(self.geo_features(items)),
                            torch.from_numpy(self.layer1_feature_centres_)).numpy()
