"""City partition keys and path confinement.

City names become Delta partition values and file paths, so keys are sanitised: ASCII
lower-case letters, digits and dashes, at most ``MAX_KEY_LEN`` characters. The display name
is kept in the ``city`` column. Keys are stable: the same dataset always yields the same keys.

- ``São Paulo`` -> ``sao-paulo``; ``St. John's`` -> ``st-john-s``; ``../../etc`` -> ``etc``.
- Same-name cities in different provinces (Springfield IL / MA) get the province appended:
  ``springfield-illinois`` and ``springfield-massachusetts``.
- A name with nothing usable left (only punctuation or non-Latin script) becomes
  ``city-<hash>`` of the display name.
- ``UNASSIGNED`` (``unassigned``) is reserved for rows without a city; a real city whose name
  sanitises to it (``Unassigned``, ``UNASSIGNED!``) becomes ``unassigned-<hash>``.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path

import polars as pl

MAX_KEY_LEN = 64
UNASSIGNED = "unassigned"
"""Key for rejected rows whose city is unknown (missing city, interaction on an unknown item)."""

_KEY_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")


def _digest(text: str, n: int = 8) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:n]


def slugify(name: str) -> str:
    """ASCII slug of a display name; may be empty."""
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]+", "-", folded.lower()).strip("-")


def sanitize_city_key(name: str | None) -> str:
    """Map one display name to a safe partition key (see the module docstring)."""
    if name is None or not str(name).strip():
        return UNASSIGNED
    text = str(name)
    slug = slugify(text)
    if not slug:
        return f"city-{_digest(text)}"
    if slug == UNASSIGNED:
        # A real city named "Unassigned" must never merge into the exempt partition of rows
        # without a city: it gets its own key (``unassigned-<hash>``).
        return f"{UNASSIGNED}-{_digest(text)}"
    if len(slug) > MAX_KEY_LEN:
        slug = slug[: MAX_KEY_LEN - 9].rstrip("-") + "-" + _digest(text)
    return slug


def is_valid_city_key(key: str) -> bool:
    return bool(_KEY_RE.match(key)) and ".." not in key


def validate_city_key(key: str) -> str:
    """Raise ``ValueError`` for a partition key that is unsafe as a path component."""
    if not isinstance(key, str) or not is_valid_city_key(key):
        raise ValueError(
            f"invalid city partition key {key!r}: keys must match {_KEY_RE.pattern} "
            "(use lgsid_pipeline.partitions.sanitize_city_key on the display name)"
        )
    return key


def city_key_table(items: pl.DataFrame) -> pl.DataFrame:
    """Distinct (province, city) -> city_key, disambiguating same-name cities.

    Returns columns ``province, city, city_key``; rows with a missing city map to
    ``UNASSIGNED``.
    """
    pairs = (
        items.select(pl.col("province").cast(pl.Utf8), pl.col("city").cast(pl.Utf8))
        .unique()
        .sort(["city", "province"], nulls_last=True)
    )
    cities = pairs["city"].to_list()
    provinces = pairs["province"].to_list()
    base = [sanitize_city_key(c) for c in cities]
    counts: dict[str, int] = {}
    for b in base:
        counts[b] = counts.get(b, 0) + 1
    keys: list[str] = []
    for city, prov, b in zip(cities, provinces, base):
        if b == UNASSIGNED or counts[b] == 1:
            keys.append(b)
            continue
        qualified = sanitize_city_key(f"{city} {prov}" if prov else city)
        keys.append(qualified)
    # Still colliding (e.g. "../../etc" and "etc" in one province): add a digest of the name.
    seen: dict[str, int] = {}
    for k in keys:
        seen[k] = seen.get(k, 0) + 1
    final = []
    for city, prov, k in zip(cities, provinces, keys):
        if k != UNASSIGNED and seen[k] > 1:
            k = sanitize_city_key(f"{k[: MAX_KEY_LEN - 9]}-{_digest(f'{prov}|{city}')}")
        final.append(k)
    return pairs.with_columns(pl.Series("city_key", final, dtype=pl.Utf8))


def confine(root: str | Path, *parts: str) -> Path:
    """Join ``parts`` under ``root`` and refuse any result outside ``root``.

    Rejects NUL bytes, absolute parts and ``..`` escapes, so a hostile city name or config
    value cannot make the pipeline write outside its home.
    """
    base = Path(root).resolve()
    for part in parts:
        if "\x00" in str(part):
            raise ValueError(f"path component contains a NUL byte: {part!r}")
        if Path(str(part)).is_absolute():
            raise ValueError(f"absolute path component {part!r} not allowed under {base}")
    target = base.joinpath(*[str(p) for p in parts]).resolve()
    if target != base and base not in target.parents:
        raise ValueError(f"path {target} escapes its root {base}")
    return target


CITY_BATCH = 64
"""Most cities one per-city run materializes (the CLI, the schedules, the sensors and UI
backfills): a run's fixed cost is paid once per batch, and a batch's frames stay small."""


def city_batches(selected: list[str], order: list[str], max_per_batch: int = CITY_BATCH) -> list[list[str]]:
    """``selected`` cut into runs of at most ``max_per_batch`` keys that are contiguous in
    ``order`` (the partition order), so each batch is one partition-key range that holds no
    city outside ``selected``. Keys not in ``order`` are refused."""
    if max_per_batch < 1:
        raise ValueError(f"max_per_batch must be >= 1, got {max_per_batch}")
    position = {k: i for i, k in enumerate(order)}
    unknown = sorted(set(selected) - set(position))
    if unknown:
        raise ValueError(f"cities {unknown[:5]} are not partitions")
    batches: list[list[str]] = []
    last = None
    for key in sorted(set(selected), key=position.__getitem__):
        i = position[key]
        if batches and last == i - 1 and len(batches[-1]) < max_per_batch:
            batches[-1].append(key)
        else:
            batches.append([key])
        last = i
    return batches
