"""Find code repeated in two places: 10 or more consecutive lines (at least 3 statements) that
are identical or of the same shape (the same calls and attributes, with local names and literals renamed).

    python scripts/check_duplicate_lines.py                # the project's code folders
    python scripts/check_duplicate_lines.py --min 8 assets/

Written by hand because pylint's similarity checker compares lines as text only: it does not see
two blocks that differ in their variable names, which is the copy a refactor most often leaves.

How a statement's shape is formed (``shape_lines``): the source is tokenized; comments,
docstrings, blank lines and import statements are dropped; every literal becomes a placeholder;
a name is kept when it is a keyword, an attribute (after ``.``), a called function or a keyword
argument, and becomes ``_`` otherwise. Windows of three consecutive shapes are hashed; two equal
windows in different places (or non-overlapping places of one file) are extended to their
longest common run, which is a finding when it spans 10 or more physical lines in both places. Statements that are only a name or a constant (``pass``, ``...``) are dropped, and a
statement whose shape repeats the one before it (a column of similar field declarations) adds no
lines to a run.
"""

from __future__ import annotations

import argparse
import io
import keyword
import sys
import tokenize
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("lgsid_pipeline", "assets", "resources", "orchestration")
MIN_LINES = 10  # physical lines, in both places
MIN_STATEMENTS = 3  # a run shorter than this is one long call or literal, not a copied block
_SKIP = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
         tokenize.ENCODING, tokenize.ENDMARKER}


@dataclass(frozen=True)
class Statement:
    line: int  # first physical line
    end: int  # last physical line
    shape: str


def shape_lines(source: str) -> list[Statement]:
    """The file's statements (logical lines), each reduced to its shape."""
    out: list[Statement] = []
    toks = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)]
    stmt: list[tokenize.TokenInfo] = []
    for tok in toks:
        if tok.type == tokenize.NEWLINE or tok.type == tokenize.ENDMARKER:
            if stmt:
                s = _shape(stmt)
                if s is not None:
                    out.append(Statement(stmt[0].start[0], stmt[-1].end[0], s))
            stmt = []
        elif tok.type not in _SKIP:
            stmt.append(tok)
    return out


def _shape(stmt: list[tokenize.TokenInfo]) -> str | None:
    first = stmt[0].string
    if first in ("import", "from") and any(t.string == "import" for t in stmt):
        return None
    if all(t.type == tokenize.STRING for t in stmt):
        return None  # a docstring
    if len(stmt) == 1:
        return None  # pass, ..., a bare name
    parts = []
    for i, t in enumerate(stmt):
        if t.type == tokenize.NAME:
            prev = stmt[i - 1].string if i else ""
            nxt = stmt[i + 1].string if i + 1 < len(stmt) else ""
            kwarg = nxt == "=" and prev in ("(", ",")
            called = nxt == "(" and prev not in ("def", "class")  # a definition's own name is renamed
            keep = keyword.iskeyword(t.string) or prev == "." or called or kwarg
            parts.append(t.string if keep else "_")
        elif t.type in (tokenize.NUMBER, tokenize.STRING) or t.type == getattr(tokenize, "FSTRING_START", -1):
            parts.append("#")
        elif t.type in (getattr(tokenize, "FSTRING_MIDDLE", -1), getattr(tokenize, "FSTRING_END", -1)):
            continue
        else:
            parts.append(t.string)
    return " ".join(parts)


@dataclass(frozen=True)
class Finding:
    a: tuple[str, int]
    b: tuple[str, int]
    lines: int

    def __str__(self) -> str:
        return f"{self.a[0]}:{self.a[1]} and {self.b[0]}:{self.b[1]} share {self.lines} lines of the same shape"


def find_duplicates(paths: list[Path], min_lines: int = MIN_LINES, root: Path = ROOT,
                    min_statements: int = MIN_STATEMENTS) -> list[Finding]:
    """Every pair of places sharing a run of consecutive same-shape statements (at least
    ``min_statements``) that spans ``min_lines`` or more physical lines in both places. One
    finding per run, extended to the longest common run."""
    files = {}
    index: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for p in paths:
        name = str(p.relative_to(root)) if p.is_relative_to(root) else str(p)
        stmts = shape_lines(p.read_text())
        files[name] = stmts
        for i in range(len(stmts) - min_statements + 1):
            window = tuple(s.shape for s in stmts[i:i + min_statements])
            if len(set(window)) == 1:
                continue  # one repeated shape: a column of declarations, not a copied block
            index[hash(window)].append((name, i))
    findings, covered = [], set()
    for places in index.values():
        if len(places) < 2:
            continue
        for x in range(len(places)):
            for y in range(x + 1, len(places)):
                (fa, ia), (fb, ib) = places[x], places[y]
                if fa == fb and abs(ia - ib) < min_statements:
                    continue  # overlapping windows of one block
                if (fa, ia - 1, fb, ib - 1) in covered:
                    covered.add((fa, ia, fb, ib))
                    continue  # the continuation of a run already reported
                covered.add((fa, ia, fb, ib))
                sa, sb = files[fa], files[fb]
                n = 0
                while ia + n < len(sa) and ib + n < len(sb) and sa[ia + n].shape == sb[ib + n].shape:
                    n += 1
                if fa == fb and ia < ib < ia + n:
                    n = ib - ia  # the run would overlap itself
                lines = min(_span(sa[ia:ia + n]), _span(sb[ib:ib + n]))
                if n >= min_statements and lines >= min_lines:
                    findings.append(Finding((fa, sa[ia].line), (fb, sb[ib].line), lines))
    return sorted(findings, key=lambda f: (f.a, f.b))


def _span(run: list[Statement]) -> int:
    """Physical lines of a run, leaving out statements that repeat the shape just before them:
    a column of similar declarations (``a: int = 0`` / ``b: int = 1``) is not a copied block."""
    return sum(s.end - s.line + 1 for i, s in enumerate(run) if i == 0 or s.shape != run[i - 1].shape)


def project_files(root: Path = ROOT, folders=FOLDERS) -> list[Path]:
    return sorted(p for f in folders for p in (root / f).rglob("*.py") if "__pycache__" not in p.parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*", help="files or folders (default: the project's code folders)")
    ap.add_argument("--min", type=int, default=MIN_LINES, help="shortest run to report, in physical lines")
    args = ap.parse_args(argv)
    if args.paths:
        paths = sorted({q for p in map(Path, args.paths)
                        for q in ([p] if p.is_file() else p.rglob("*.py")) if "__pycache__" not in q.parts})
        paths = [p.resolve() for p in paths]
    else:
        paths = project_files()
    findings = find_duplicates(paths, args.min)
    for f in findings:
        print(f)
    print(f"{len(findings)} repeated blocks of {args.min}+ lines in {len(paths)} files")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
