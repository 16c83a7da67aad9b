"""The suite's own layout: pytest (rootdir-relative "prepend" imports) needs unique test module basenames."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_modules_share_a_basename() -> None:
    # two tests/**/test_x.py stop the whole collection ("import file mismatch"), as merges did twice
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert not [n for n, c in names.items() if c > 1], sorted(n for n, c in names.items() if c > 1)
