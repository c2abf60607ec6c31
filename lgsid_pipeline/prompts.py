"""Geography prompts (paper Appendix A, Figure 6) and prompt mismatching (Eq. 1).

A prompt is the instruction followed by one line per item field. Fields a dataset lacks (null
or empty) are left out cleanly, never rendered as "None". The template is configurable: each
line is a ``str.format`` pattern over the item's columns, and a line is dropped when every
field it names is missing.

Eq. 1: P_i = [P_content, P_location^i] and P_i^j = [P_content, P_location^j]. The content
lines come from item ``a`` and the location line from item ``b`` (``build_prompt(a, b)``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import polars as pl

DEFAULT_INSTRUCTION = (
    "You are now a local-life recommender. Generate a content understanding embedding for the "
    "following item."
)

# (section, pattern). "location" lines are taken from the location item, all others from the
# content item. Order follows Figure 6.
DEFAULT_LINES: tuple[tuple[str, str], ...] = (
    ("content", "Item: {name}"),
    ("location", "Location: {province}, {city}, {district}, {town}"),
    # Finer than the admin hierarchy: without it, two shops in one town render the same location
    # text, and the hard (same-town) negatives of Eq. 1 would equal the true prompt. Three
    # decimals is about 100 m.
    ("location", "Coordinates: {lat:.3f}, {lon:.3f}"),
    ("content", "Category hierarchy: {cat1} > {cat2} > {cat3}"),
    ("content", "Brand: {brand}"),
    ("content", "Price: {price}"),
    ("content", "Full goods list: {goods}"),
    ("content", "Top-selling items: {top_sellers}"),
)

_FIELD = re.compile(r"\{(\w+)(?::([^}]*))?\}")


@dataclass(frozen=True)
class PromptTemplate:
    instruction: str = DEFAULT_INSTRUCTION
    lines: tuple[tuple[str, str], ...] = DEFAULT_LINES
    location_fields: tuple[str, ...] = field(
        default=("province", "city", "district", "town", "lat", "lon")
    )

    def fields(self) -> set[str]:
        return {m[0] for _, pat in self.lines for m in _FIELD.findall(pat)}


DEFAULT_TEMPLATE = PromptTemplate()


def _present(value: object) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and value != value:  # NaN
        return False
    return str(value).strip() != ""


def _fmt(value: object, spec: str | None = None) -> str:
    if spec and isinstance(value, int | float):
        return format(value, spec)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).strip()


def _render_line(pattern: str, row: Mapping[str, object]) -> str | None:
    """Render one template line; missing fields vanish with their separator.

    ``"Location: {province}, {city}, {district}, {town}"`` with no district becomes
    ``"Location: NY, New York, Midtown"``; a line whose fields are all missing is dropped.
    """
    parts = re.split(r"(\{\w+(?::[^}]*)?\})", pattern)
    head, tail = parts[0], parts[-1]
    fields = [_FIELD.fullmatch(p).groups() for p in parts[1::2]]
    seps = parts[2:-1:2] or [" "]
    values = [_fmt(row.get(n), spec) for n, spec in fields if _present(row.get(n))]
    if not values:
        return None
    return head + seps[0].join(values) + tail


def build_prompt(
    content: Mapping[str, object],
    location: Mapping[str, object] | None = None,
    template: PromptTemplate = DEFAULT_TEMPLATE,
) -> str:
    """Eq. 1: the prompt of item ``content`` placed at the location of item ``location``.

    With ``location=None`` this is the item's own (true) prompt P_i.
    """
    loc = content if location is None else location
    lines = [template.instruction] if template.instruction else []
    for section, pattern in template.lines:
        row = loc if section == "location" else content
        rendered = _render_line(pattern, row)
        if rendered is not None:
            lines.append(rendered)
    return "\n".join(lines)


def build_prompts(
    items: pl.DataFrame,
    location_items: pl.DataFrame | None = None,
    template: PromptTemplate = DEFAULT_TEMPLATE,
) -> list[str]:
    """Vector form of :func:`build_prompt`: row i's content at row i of ``location_items``."""
    if location_items is not None and location_items.height != items.height:
        raise ValueError(
            f"location_items has {location_items.height} rows but items has {items.height}"
        )
    content_rows = items.to_dicts()
    loc_rows: Sequence[Mapping[str, object]] = (
        content_rows if location_items is None else location_items.to_dicts()
    )
    return [build_prompt(c, l, template) for c, l in zip(content_rows, loc_rows)]
