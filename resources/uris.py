"""Checks and clean-up of the storage locations users configure: the tables URI or local
tables path, Delta table names, and the ``storage_options`` JSON for delta-rs and polars.

Table ``<name>`` lives at ``<tables root>/lgsid/<name>``. Every check here rejects rather than
repairs a location that could escape its root (``..``, absolute table names, credentials in a
URI), and no error message repeats a storage option's value: it may be a secret.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from lgsid_pipeline.partitions import confine

DELTA_SCHEMA = "lgsid"
REMOTE_SCHEMES = ("s3", "s3a")
"""Object stores the Delta tables may live on (delta-rs and polars read both as S3)."""

_TABLE_NAME_RE = re.compile(r"^[A-Za-z0-9_]{1,255}$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9._=+@,-]+$")


def parse_storage_options(text: str | None, what: str = "LGSID_STORAGE_OPTIONS") -> dict[str, str]:
    """A JSON object of storage options -> ``dict[str, str]`` (scalars become strings,
    booleans ``"true"``/``"false"``). The error never repeats the text: it may hold secrets."""
    if text is None or not text.strip():
        return {}
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} is not valid JSON ({exc.msg} at character {exc.pos}); expected an "
                         'object such as {"AWS_REGION": "eu-west-1"}') from None
    if not isinstance(raw, dict):
        raise ValueError(f"{what} must be a JSON object of option names to values, not {type(raw).__name__}")
    return normalize_storage_options(raw, what)


def normalize_storage_options(raw: dict | None, what: str = "storage_options") -> dict[str, str]:
    """Option names -> string values: booleans become ``"true"``/``"false"``, numbers their
    text, ``None`` values are dropped; other value types and empty names are refused."""
    out: dict[str, str] = {}
    for key, value in (raw or {}).items():
        if not isinstance(key, str) or not key.strip():
            raise ValueError(f"{what}: option names must be non-empty strings")
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            out[key] = str(value)
        elif value is None:
            continue
        else:
            raise ValueError(f"{what}: option {key!r} must be a string, number or boolean, "
                             f"not {type(value).__name__}")
    return out


def default_storage_options() -> dict[str, str]:
    """``$LGSID_STORAGE_OPTIONS`` parsed (see :func:`parse_storage_options`), else ``{}``."""
    return parse_storage_options(os.environ.get("LGSID_STORAGE_OPTIONS"))


def is_remote_uri(location: str | None) -> bool:
    """True for ``scheme://...`` locations other than ``file://``."""
    return bool(location) and "://" in location and not location.startswith("file://")


def validate_table_name(name: str) -> str:
    """Delta tables are named after assets: ``[A-Za-z0-9_]``, so a name can never add a path
    segment, climb out with ``..`` or be absolute."""
    if not isinstance(name, str) or not _TABLE_NAME_RE.match(name):
        raise ValueError(f"invalid Delta table name {name!r}: table names are asset names "
                         "(letters, digits and underscores only; no '/', '..' or absolute paths)")
    return name


def normalize_tables_uri(uri: str) -> str:
    """Check an object-store URI for the Delta tables and return it without a trailing slash.

    Accepted: ``s3://bucket`` or ``s3://bucket/prefix/...`` (also ``s3a://``) with a valid
    bucket name and plain prefix segments: no ``..`` or ``.``, no empty segments (``//``), no
    query, fragment, credentials or control characters.
    """
    if not isinstance(uri, str) or "://" not in uri:
        raise ValueError(f"invalid tables URI {uri!r}: expected s3://bucket/prefix or a local path")
    scheme, rest = uri.split("://", 1)
    if "@" in rest.split("/", 1)[0]:  # never echo it: the user info would be a credential
        raise ValueError("invalid tables URI: credentials in the URI (user@host) are not allowed; "
                         "put them in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)")
    if scheme.lower() not in REMOTE_SCHEMES:
        raise ValueError(f"unsupported tables URI scheme {scheme!r} in {uri!r}: use "
                         f"{' or '.join(s + '://' for s in REMOTE_SCHEMES)} (object storage) or a local path")
    rest = rest.rstrip("/")
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise ValueError(f"invalid tables URI {uri!r}: {bucket!r} is not a valid bucket name "
                         "(3-63 lower-case letters, digits, dots and dashes)")
    for segment in prefix.split("/") if prefix else []:
        if segment in ("", ".", "..") or not _SEGMENT_RE.match(segment):
            raise ValueError(f"invalid tables URI {uri!r}: path segment {segment!r} is not allowed "
                             "(no '..', '.', '//', query, fragment or special characters)")
    return f"{scheme.lower()}://{rest}"


def local_tables_root(home: str, tables_uri: str | None = None) -> Path:
    """The local folder holding ``<schema>/<table>``: ``tables_uri`` as a path (``file://``
    allowed), else ``<home>/delta`` (confined under ``home``)."""
    if tables_uri:
        path = tables_uri[len("file://"):] if tables_uri.startswith("file://") else tables_uri
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", path):
            raise ValueError(f"invalid tables location {tables_uri!r}: it looks like a URI without '//' "
                             "(expected s3://bucket/prefix or an absolute local path)")
        if "\x00" in path or not Path(path).expanduser().is_absolute():
            raise ValueError(f"invalid tables path {tables_uri!r}: a local tables location must be an "
                             "absolute path (every Dagster process resolves it the same way)")
        return Path(path).expanduser().resolve()
    return confine(Path(home).expanduser().resolve(), "delta")
