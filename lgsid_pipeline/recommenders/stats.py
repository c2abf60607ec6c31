"""Seed statistics in the shape of the paper's Table 5 (Appendix D).

mean ± SD (sample SD, ddof=1), a 95% confidence interval from the t-distribution, median (IQR),
and a Wilcoxon signed-rank test of a variant against a baseline over paired seeds.

The paper reports p = 0.031 with six paired seeds, which is the smallest *two-sided* exact
p-value for n = 6 (2 / 2**6); the default here is therefore two-sided. With n paired seeds the
smallest attainable two-sided p is 2 / 2**n, so fewer than six seeds can never reach p < 0.05;
:func:`wilcoxon_paired` reports that instead of pretending otherwise.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as st


def summarize(values, confidence: float = 0.95) -> dict[str, float]:
    """mean, sd, t-based CI, median and IQR of per-seed values."""
    x = np.asarray(list(values), dtype=np.float64)
    if x.size == 0:
        raise ValueError("summarize needs at least one value")
    n = x.size
    mean = float(x.mean())
    sd = float(x.std(ddof=1)) if n > 1 else float("nan")
    if n > 1:
        half = float(st.t.ppf(0.5 + confidence / 2.0, df=n - 1) * sd / math.sqrt(n))
        lo, hi = mean - half, mean + half
    else:
        lo = hi = float("nan")
    q1, med, q3 = np.percentile(x, [25, 50, 75])
    return {
        "n": n,
        "mean": mean,
        "sd": sd,
        "ci_low": lo,
        "ci_high": hi,
        "median": float(med),
        "iqr": float(q3 - q1),
    }


def min_attainable_p(n: int, alternative: str = "two-sided") -> float:
    """Smallest exact Wilcoxon signed-rank p-value with ``n`` non-zero paired differences."""
    if n <= 0:
        return 1.0
    return min(1.0, (2.0 if alternative == "two-sided" else 1.0) / 2.0**n)


def wilcoxon_paired(variant, baseline, alternative: str = "two-sided", alpha: float = 0.05) -> dict:
    """Wilcoxon signed-rank test of ``variant`` vs ``baseline`` over paired seeds.

    Returns ``{n, statistic, p, min_p, can_reach_significance, significant, mean_diff}``; ``p`` is
    NaN when every paired difference is zero (the test is undefined).
    """
    a = np.asarray(list(variant), dtype=np.float64)
    b = np.asarray(list(baseline), dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"variant and baseline must be paired 1-D sequences; got {a.shape} vs {b.shape}")
    d = a - b
    n_nz = int(np.count_nonzero(d))
    min_p = min_attainable_p(n_nz, alternative)
    if n_nz == 0:
        stat, p = float("nan"), float("nan")
    else:
        res = st.wilcoxon(a, b, alternative=alternative, zero_method="wilcox", method="auto")
        stat, p = float(res.statistic), float(res.pvalue)
    return {
        "n": int(a.size),
        "statistic": stat,
        "p": p,
        "min_p": min_p,
        "can_reach_significance": bool(min_p < alpha),
        "significant": bool(np.isfinite(p) and p < alpha),
        "mean_diff": float(d.mean()) if d.size else float("nan"),
    }


def paired_over_users(variant, baseline, *, n_boot: int = 2000, n_perm: int = 10000, seed: int = 0,
                      confidence: float = 0.95, alpha: float = 0.05) -> dict:
    """Compare two methods on the same test users: per-user scores (e.g. Hit@10 or NDCG@10,
    each averaged over the seeds) of ``variant`` against ``baseline``.

    Seeds are few (3-6), so a Wilcoxon test over seeds cannot reach p < 0.05 below six of them
    (:func:`min_attainable_p`); the test users are thousands. This asks the other question, "is
    the variant's mean over this user population higher?", about the quantity Hit@10 and NDCG@10
    report, the mean:

    * ``ci_low`` / ``ci_high``: paired bootstrap CI of the mean difference (``n_boot`` seeded
      resamples of users);
    * ``p``: paired sign-flip permutation test of the mean difference (``n_perm`` seeded random
      sign flips, two-sided, ``(hits + 1) / (n_perm + 1)``, so never below ``1 / (n_perm + 1)``);
      ``significant`` is ``p < alpha``;
    * ``wilcoxon_p``: the rank-based Wilcoxon signed-rank test on the same differences, for
      reference. It tests symmetry of the differences, not their mean, and can disagree with the
      two above when a method hits fewer users but at higher ranks.

    Returns ``{users, mean_variant, mean_baseline, mean_diff, rel_diff, ci_low, ci_high,
    differing_users, p, significant, wilcoxon_p}``.
    """
    a = np.asarray(variant, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"variant and baseline must be paired non-empty 1-D arrays; got {a.shape} vs {b.shape}")
    if n_boot < 1 or n_perm < 1:
        raise ValueError(f"n_boot and n_perm must be >= 1, got {n_boot} and {n_perm}")
    d = a - b
    n = d.size
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // n)  # bounded memory: chunk x n draws at a time
    boots = np.empty(n_boot)
    for s in range(0, n_boot, chunk):
        m = min(chunk, n_boot - s)
        boots[s : s + m] = d[rng.integers(0, n, size=(m, n))].mean(axis=1)
    lo, hi = np.quantile(boots, [0.5 - confidence / 2.0, 0.5 + confidence / 2.0])
    observed = abs(d.mean())
    extreme = 0
    for s in range(0, n_perm, chunk):
        m = min(chunk, n_perm - s)
        signs = rng.integers(0, 2, size=(m, n), dtype=np.int8) * 2 - 1
        extreme += int((np.abs((signs * d).mean(axis=1)) >= observed - 1e-12).sum())
    p = (extreme + 1) / (n_perm + 1)
    nz = int(np.count_nonzero(d))
    w = float(st.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue) if nz else float("nan")
    mb = float(b.mean())
    return {
        "users": n,
        "mean_variant": float(a.mean()),
        "mean_baseline": mb,
        "mean_diff": float(d.mean()),
        "rel_diff": float(d.mean() / mb) if mb > 0 else float("nan"),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "differing_users": nz,
        "p": float(p),
        "significant": bool(p < alpha),
        "wilcoxon_p": w,
    }


def metric_regressions(new: dict[str, float], old: dict[str, float], tolerance: float):
    """Compare two runs' headline metrics: (drops, vanished).

    ``drops`` maps each metric that fell by more than ``tolerance`` relative to its previous
    value to ``"before -> after"``; ``vanished`` lists the metrics of the previous run that the
    new run no longer reports (a method or model that silently stopped being evaluated is a
    regression too, not a pass)."""
    drops = {}
    for key, after in new.items():
        before = old.get(key)
        if before is not None and before > 0 and (before - after) / before > tolerance:
            drops[key] = f"{before:.4f} -> {after:.4f}"
    vanished = sorted(set(old) - set(new))
    return drops, vanished
