"""The test command's file order (``tests/conftest.py:_longest_files_first``): the files
that took longest first, a file's tests in their own order, files without a recorded time
after the others, most tests first (xdist's own order)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests import conftest


def test_every_recorded_file_is_a_test_file() -> None:
    took = json.loads(conftest.DURATIONS.read_text())
    root = conftest.DURATIONS.parent.parent
    assert took and all(isinstance(s, (int, float)) and s >= 0 for s in took.values())
    stale = [f for f in took if not (root / f).is_file()]
    assert not stale, f"tests/durations.json names files that are gone: {stale}"


def test_the_longest_file_goes_first_and_a_file_keeps_its_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = tmp_path / "durations.json"
    record.write_text(json.dumps({"tests/test_b.py": 5.0, "tests/test_c.py": 300.0}))
    monkeypatch.setattr(conftest, "DURATIONS", record)
    ids = [
        "tests/test_a.py::one", "tests/test_a.py::two", "tests/test_a.py::three",
        "tests/test_b.py::one", "tests/test_b.py::two",
        "tests/test_c.py::z", "tests/test_c.py::a",
        "tests/test_d.py::x",
    ]
    items = [SimpleNamespace(nodeid=i) for i in ids]
    conftest._longest_files_first(items)  # type: ignore[arg-type]
    assert [i.nodeid for i in items] == [
        "tests/test_c.py::z", "tests/test_c.py::a",  # 300 s
        "tests/test_b.py::one", "tests/test_b.py::two",  # 5 s
        "tests/test_a.py::one", "tests/test_a.py::two", "tests/test_a.py::three",  # unknown, 3 tests
        "tests/test_d.py::x",  # unknown, 1 test
    ]
    record.write_text("not json")  # unreadable: the order is left as collected
    backwards = items[::-1]
    conftest._longest_files_first(backwards)  # type: ignore[arg-type]
    assert backwards == items[::-1]
