"""The house rules a newcomer relies on: no block of code repeated in two places, no core module
over 450 lines, no function over 80 lines outside the tests."""

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_CORE_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80
CODE_FOLDERS = ("lgsid_pipeline", "assets", "resources", "orchestration", "benchmarks", "scripts")


def _checker():
    spec = importlib.util.spec_from_file_location("check_duplicate_lines", ROOT / "scripts" / "check_duplicate_lines.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


BLOCK = '''
def {name}(rows, {arg}):
    """A docstring that may differ."""
    total = 0
    seen = set()
    for row in rows:  # a comment that may differ
        if row.key in seen:
            continue
        seen.add(row.key)
        total += row.value * {arg}
        if total > 100:
            break
    scaled = sorted(seen)
    return total, scaled[:{k}]
'''


def test_the_project_has_no_repeated_blocks():
    chk = _checker()
    findings = chk.find_duplicates(chk.project_files())
    assert not findings, "\n".join(map(str, findings))


def test_the_checker_finds_a_renamed_copy_and_nothing_shorter(tmp_path):
    chk = _checker()
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text(BLOCK.format(name="first", arg="weight", k=3))
    # Same shape: other names, other literals, other comments and docstring.
    b.write_text("import os\n" + BLOCK.format(name="second", arg="scale", k=7).replace("may differ", "is new"))
    found = chk.find_duplicates([a, b], root=tmp_path)
    assert len(found) == 1 and found[0].lines >= 10, found
    assert {found[0].a[0], found[0].b[0]} == {"a.py", "b.py"}
    # A different call in the middle breaks the shape: the halves are under 10 lines each.
    b.write_text(BLOCK.format(name="second", arg="scale", k=7).replace("seen.add(row.key)", "seen.discard(row)"))
    assert chk.find_duplicates([a, b], root=tmp_path) == []
    # Two copies inside one file are found too.
    a.write_text(BLOCK.format(name="first", arg="w", k=1) + BLOCK.format(name="again", arg="v", k=2))
    assert len(chk.find_duplicates([a], root=tmp_path)) == 1


def test_the_checker_ignores_imports_docstrings_and_columns_of_declarations(tmp_path):
    chk = _checker()
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    imports = "".join(f"import mod{i}\n" for i in range(12))
    fields = "class C:\n" + "".join(f"    f{i}: int = {i}\n" for i in range(12))
    a.write_text(imports + fields)
    b.write_text(imports + fields.replace("class C", "class D"))
    assert chk.find_duplicates([a, b], root=tmp_path) == []


def _python_files(folders):
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py") if "__pycache__" not in p.parts)


def test_no_core_module_is_over_450_lines():
    long = {str(p.relative_to(ROOT)): n for p in _python_files(["lgsid_pipeline"])
            if (n := len(p.read_text().splitlines())) > MAX_CORE_MODULE_LINES}
    assert not long, long


@pytest.mark.parametrize("folder", CODE_FOLDERS)
def test_no_function_is_over_80_lines(folder):
    long = {}
    for p in _python_files([folder]):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long[f"{p.relative_to(ROOT)}:{node.lineno} {node.name}"] = n
    assert not long, long
