"""docs/bad_inputs.md: every row names at least one test, and every test it names exists."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CATALOGUE = REPO / "docs" / "bad_inputs.md"


def _rows():
    for line in CATALOGUE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 4 and cells[0] not in ("input", "---"):
            yield line, cells[-1]


def _named_tests(cell: str):
    """(file, function) pairs of a cell: ``tests/a.py::f``, ``a.py::f``, ``::g`` (same file)."""
    current = None
    for path, func in re.findall(r"((?:tests/)?[\w]+\.py)?::(\w+)", cell):
        current = Path(path).name if path else current
        assert current, f"docs/bad_inputs.md: '::{func}' without a file before it in {cell!r}"
        yield current, func


def test_every_row_names_existing_tests():
    rows = list(_rows())
    assert len(rows) >= 50, f"only {len(rows)} catalogue rows found in {CATALOGUE}"
    for line, cell in rows:
        named = list(_named_tests(cell))
        assert named, f"docs/bad_inputs.md row names no test: {line[:120]}"
        for file, func in named:
            source = REPO / "tests" / file
            assert source.is_file(), f"docs/bad_inputs.md names {file}, not in tests/: {line[:80]}"
            assert re.search(
                rf"^def {func}\(", source.read_text(), re.M
            ), f"docs/bad_inputs.md names {file}::{func}, which {file} does not define"
