"""Keep benchmarks/RESULTS.md in step with benchmarks/results/*.md.

Each file under results/ is one section of RESULTS.md, mirrored with its headings demoted by one
level (``# X`` -> ``## X``); lines inside code fences are left alone (a ``# comment`` in a shell
block is not a heading). A section runs from its demoted first heading to the next ``---`` rule.

    python benchmarks/sync_results.py            # rewrite the mirrored sections
    python benchmarks/sync_results.py --check    # exit 1 and name the sections that drifted
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def demote(markdown: str) -> str:
    out, fence = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
        if not fence and re.match(r"#+ ", line):
            line = "#" + line
        out.append(line)
    return "\n".join(out).rstrip("\n") + "\n"


def section_span(text: str, heading: str) -> tuple[int, int]:
    """(start, end) of the section that opens with ``heading`` in RESULTS.md's text."""
    marker = "\n" + heading + "\n"
    i = text.find(marker)
    if i < 0:
        raise KeyError(f"RESULTS.md has no section {heading!r}")
    i += 1
    j = text.find("\n---\n", i)
    return i, (len(text) if j < 0 else j + 1)


def sync(results: Path = ROOT / "RESULTS.md", parts: Path = ROOT / "results", check: bool = False) -> list[str]:
    """Mirror every part; returns the names of the parts that differed (and, unless ``check``,
    rewrites them)."""
    text = results.read_text()
    drifted = []
    for part in sorted(parts.glob("*.md")):
        body = part.read_text()
        mirrored = demote(body)
        i, j = section_span(text, mirrored.splitlines()[0])
        current = text[i:j].rstrip("\n") + "\n"
        if current != mirrored:
            drifted.append(part.name)
            text = text[:i] + mirrored + ("\n" if j < len(text) else "") + text[j:]
    if drifted and not check:
        results.write_text(text)
    return drifted


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="report drift, change nothing")
    args = ap.parse_args(argv)
    drifted = sync(check=args.check)
    if drifted:
        print(("drifted: " if args.check else "updated: ") + ", ".join(drifted))
    return 1 if (drifted and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
