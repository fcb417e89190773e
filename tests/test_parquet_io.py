"""Parquet objects are read and written through Arrow buffers, never Python file objects.

``pq.read_table(io.BytesIO(body))`` makes Arrow's I/O threads call back into Python; a
process that exits soon after can then abort in C++ (``terminate called without an active
exception``, exit -6): a ``deltaferry pull`` that had printed its one-line error and should
have exited 1 did so in CI. ``pa.BufferReader`` over ``bytes`` is no better: Arrow's worker
thread releases the read's input (the Python object) after ``read_table`` returned, and
must take the GIL to do it. Measured on this machine, processes that read a 200k-row file
and exit: 74 of 100 aborted through ``io.BytesIO``, 27 of 40 through ``pa.BufferReader``
(pandas imported), 7 of 40 running ``READER`` below with ``arrow_input`` made a plain
``pa.BufferReader``; 0 of 40 with ``arrow_input``'s copy into an Arrow-owned buffer.
"""

from __future__ import annotations

import ast
import io
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deltaferry.delta import WRITE_OPTIONS, _encode, arrow_owned, parquet_metadata, read_parquet

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ["deltaferry", "destinations", "flows", "sources", "contracts"]

READER = """
import sys
from pathlib import Path

import pandas  # as every deltaferry process has (pandera): the abort was likelier with it
import pyarrow.json as pj

from deltaferry.delta import arrow_input, parquet_metadata, read_parquet

lines = "\\n".join('{"a": %d, "b": "v%d"}' % (i, i) for i in range(50_000)).encode()
assert pj.read_json(arrow_input(lines)).num_rows == 50_000
body = Path(sys.argv[1]).read_bytes()
assert parquet_metadata(body).num_rows == 200_000
assert read_parquet(body, columns=["b"]).column_names == ["b"]
for _ in range(3):  # the last read right before the exit, as a pull's last verify is
    assert read_parquet(body).num_rows == 200_000
sys.exit(1)  # as a failing pull does: the exit code must be exactly this
"""


def _table(n: int) -> pa.Table:
    return pa.table({"a": pa.array(range(n), pa.int64()), "b": [f"v{i}" for i in range(n)]})


def test_the_encoding_is_the_bytes_a_python_file_sink_gives():
    """The sink changed, the bytes did not: a rebuilt batch must stay byte-identical to the
    objects already in the lake."""
    table = _table(300_000).append_column("_op", pa.array(["upsert"] * 300_000))
    part = _encode(table)
    sink = io.BytesIO()
    pq.write_table(table, sink, **WRITE_OPTIONS)
    assert isinstance(part.data, bytes)
    assert part.data == sink.getvalue()
    assert read_parquet(part.data).equals(table)
    assert parquet_metadata(part.data).num_row_groups == 3


def test_a_column_not_in_the_object_is_an_arrow_error():
    body = _encode(_table(10).append_column("_op", pa.array(["upsert"] * 10))).data
    with pytest.raises(pa.ArrowInvalid):
        read_parquet(body, columns=["missing"])


@pytest.mark.integration
def test_processes_that_read_parquet_exit_with_their_own_code(tmp_path):
    path = tmp_path / "x.parquet"
    pq.write_table(_table(200_000), path, row_group_size=20_000, compression="zstd")

    def one(_: int) -> tuple[int, str]:
        p = subprocess.run(
            [sys.executable, "-c", READER, str(path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return p.returncode, p.stderr[-500:]

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(one, range(40)))
    assert [code for code, _ in results] == [1] * 40, [r for r in results if r[0] != 1][:3]


ARROW_READERS = {"pq", "parquet", "pcsv", "pj"}  # the names product code imports them as
PYTHON_INPUTS = {"io.BytesIO", "open", "pa.py_buffer", "pa.BufferReader"}


def _python_inputs(path: Path, root: Path = ROOT) -> list[str]:
    """Arrow reads of Python-held input in a file: ``pa.BufferReader(...)`` anywhere (but in
    ``arrow_input`` itself), and ``pq.read_table(io.BytesIO(...))``, ``pcsv.read_csv(open(...))``
    and the like."""
    tree = ast.parse(path.read_text(), str(path))
    allowed = {
        id(n)
        for f in ast.walk(tree)
        if isinstance(f, ast.FunctionDef) and f.name == "arrow_input"
        for n in ast.walk(f)
    }
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or id(node) in allowed:
            continue
        name = ast.unparse(node.func)
        reader = (
            isinstance(node.func, ast.Attribute) and ast.unparse(node.func.value) in ARROW_READERS
        )
        wraps = any(
            isinstance(a, ast.Call) and ast.unparse(a.func) in PYTHON_INPUTS for a in node.args[:1]
        )
        if name == "pa.BufferReader" or (reader and wraps):
            found.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)[:80]}")
    return found


def test_no_product_code_hands_arrow_python_held_input():
    found = [
        hit for d in PRODUCT for f in sorted((ROOT / d).rglob("*.py")) for hit in _python_inputs(f)
    ]
    assert found == [], "read through deltaferry.delta.arrow_input:\n" + "\n".join(found)


def test_the_scan_finds_python_held_input(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import io\nimport pyarrow as pa\nimport pyarrow.parquet as pq\n"
        "a = pq.read_table(io.BytesIO(b''))\nb = pa.BufferReader(b'')\n"
        "def arrow_input(body):\n    return pa.BufferReader(body)\n"
    )
    assert [h.split(":")[1] for h in _python_inputs(probe, tmp_path)] == ["4", "5"]


def test_an_object_read_twice_from_one_owned_copy_is_the_same_rows():
    """``arrow_input`` takes an Arrow-owned buffer as it is (verify copies an object once,
    then reads its footer and its rows from that copy)."""
    body = _encode(_table(1_000).append_column("_op", pa.array(["upsert"] * 1_000))).data
    owned = arrow_owned(body)
    assert owned.to_pybytes() == body
    assert parquet_metadata(owned).num_rows == 1_000
    assert read_parquet(owned).equals(read_parquet(body))


def test_running_out_of_memory_is_not_blamed_on_the_object():
    """``verify._parquet`` turns Arrow's errors into a VerificationError naming the object,
    but a MemoryError (``pa.ArrowMemoryError`` is one) is this machine's: raised as it is."""
    from deltaferry.errors import VerificationError
    from deltaferry.verify import _parquet

    f = SimpleNamespace(key="t/data/000000000001/x.parquet")  # what _parquet reads of it

    def exhausted() -> None:
        raise pa.ArrowMemoryError("malloc of size 1 failed")

    with pytest.raises(MemoryError):
        _parquet("job 'j' table 't' batch 1", f, exhausted)
    with pytest.raises(VerificationError, match="x.parquet matches its manifest's sha256"):
        _parquet("job 'j' table 't' batch 1", f, parquet_metadata, b"not parquet")
