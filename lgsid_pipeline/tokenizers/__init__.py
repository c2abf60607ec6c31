"""Item tokenizers: HGIT (LGSID Eq. 9-16) and the Res-KMeans / RQ-VAE baselines.

Every tokenizer follows ``SemanticIdTokenizer``: ``fit(X, items) -> self``,
``transform(X, items) -> codes (N, L) int32`` (raw codes), ``reconstruct(codes)``,
``save(dir)`` / ``SemanticIdTokenizer.load(dir)``. Uniqueness is a separate step
(``dedup.py``); diagnostics live in ``diagnostics.py``.
"""

from __future__ import annotations

from typing import Any

from lgsid_pipeline.tokenizers.base import SemanticIdTokenizer, default_codebook_sizes
from lgsid_pipeline.tokenizers.geo_prefix import GeoPrefixTokenizer
from lgsid_pipeline.tokenizers.hgit import HGITGeoLastTokenizer, HGITTokenizer
from lgsid_pipeline.tokenizers.random_id import RandomIdTokenizer
from lgsid_pipeline.tokenizers.res_kmeans import ResKMeansTokenizer
from lgsid_pipeline.tokenizers.rqvae import RQVAETokenizer

METHODS: tuple[str, ...] = ("hgit", "hgit_geo_last", "res_kmeans", "rqvae", "geo_prefix", "random_id")

_CLASSES: dict[str, type[SemanticIdTokenizer]] = {
    "hgit": HGITTokenizer,
    "hgit_geo_last": HGITGeoLastTokenizer,
    "res_kmeans": ResKMeansTokenizer,
    "rqvae": RQVAETokenizer,
    "geo_prefix": GeoPrefixTokenizer,
    "random_id": RandomIdTokenizer,
}


def make_tokenizer(method: str, **params: Any) -> SemanticIdTokenizer:
    """Build an unfitted tokenizer by name (one of ``METHODS``) with the given hyper-parameters."""
    if method not in _CLASSES:
        raise ValueError(f"unknown tokenizer method {method!r}; choose one of {METHODS}")
    try:
        return _CLASSES[method](**params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for tokenizer {method!r}: {exc}") from None


def load_tokenizer(directory) -> SemanticIdTokenizer:
    """Load a tokenizer saved with ``save(dir)``, whatever its method."""
    return SemanticIdTokenizer.load(directory)


__all__ = [
    "METHODS",
    "GeoPrefixTokenizer",
    "HGITGeoLastTokenizer",
    "HGITTokenizer",
    "RandomIdTokenizer",
    "RQVAETokenizer",
    "ResKMeansTokenizer",
    "SemanticIdTokenizer",
    "default_codebook_sizes",
    "load_tokenizer",
    "make_tokenizer",
]
