"""Geography prompts (paper Appendix A, Figure 6) and prompt mismatching (Eq. 1).

A prompt is an optional instruction followed by one line per item field. Fields a dataset lacks
(null or empty) are left out cleanly, never rendered as "None". The template is configurable:
each line is a ``str.format`` pattern over the item's columns, and a line is dropped when every
field it names is missing.

Two named templates (:func:`prompt_template`):

- ``paper`` (the default): Appendix A, Figure 6 -- the content fields and the location as
  province / city / district / town, with no coordinates. Geography must then be *learned* by
  alignment rather than read off matching digit strings, which left Origin at C@5 0.90-0.999 on
  the real sets (no headroom for G-DPO).
- ``coordinates``: ``paper`` plus a ``Coordinates: lat, lon`` location line (3 decimals, about
  100 m). An option, not the default.

The instruction line ("You are now a local-life recommender ...") is off by default: it suits
instruction-tuned encoders (the paper's BGE backbone with last-token pooling); a sentence
encoder such as the bundled all-MiniLM-L6-v2 mean-pools it into every prompt, where this
constant 15-word text makes up about half of each embedding. The encoder resource turns it on.

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
PAPER_LINES: tuple[tuple[str, str], ...] = (
    ("content", "Item: {name}"),
    ("location", "Location: {province}, {city}, {district}, {town}"),
    ("content", "Category hierarchy: {cat1} > {cat2} > {cat3}"),
    ("content", "Brand: {brand}"),
    ("content", "Price: {price}"),
    ("content", "Full goods list: {goods}"),
    ("content", "Top-selling items: {top_sellers}"),
)
# The ``coordinates`` option: finer than the admin hierarchy (three decimals is about 100 m), so
# same-town locations render differently -- at the price of making geography a string match.
COORDINATE_LINES: tuple[tuple[str, str], ...] = (
    PAPER_LINES[:2] + (("location", "Coordinates: {lat:.3f}, {lon:.3f}"),) + PAPER_LINES[2:]
)
TEMPLATE_LINES: dict[str, tuple[tuple[str, str], ...]] = {
    "paper": PAPER_LINES,
    "coordinates": COORDINATE_LINES,
}
DEFAULT_TEMPLATE_NAME = "paper"
DEFAULT_LINES = TEMPLATE_LINES[DEFAULT_TEMPLATE_NAME]
TEMPLATE_NAMES = tuple(TEMPLATE_LINES)

_FIELD = re.compile(r"\{(\w+)(?::([^}]*))?\}")


@dataclass(frozen=True)
class PromptTemplate:
    instruction: str = ""  # empty = no instruction line (see the module docstring)
    lines: tuple[tuple[str, str], ...] = DEFAULT_LINES
    location_fields: tuple[str, ...] = field(
        default=("province", "city", "district", "town", "lat", "lon")
    )

    def fields(self) -> set[str]:
        return {m[0] for _, pat in self.lines for m in _FIELD.findall(pat)}


def prompt_template(name: str = DEFAULT_TEMPLATE_NAME, instruction: bool = False) -> PromptTemplate:
    """The named template (``paper`` | ``coordinates``), with or without the instruction line."""
    if name not in TEMPLATE_LINES:
        raise ValueError(f"unknown prompt template {name!r}; expected one of {sorted(TEMPLATE_LINES)}")
    return PromptTemplate(instruction=DEFAULT_INSTRUCTION if instruction else "", lines=TEMPLATE_LINES[name])


DEFAULT_TEMPLATE = prompt_template()


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
