"""What commands print for another program: tab-separated lines that stay one line a row
whatever a cell holds, and a pipe closed early (`| head`) ending a command quietly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from deltaferry.cli import cli


def _unescape(cell: str) -> str:
    """PostgreSQL's COPY text escapes undone, written again here (not deltaferry's code)."""
    out, i = [], 0
    while i < len(cell):
        if cell[i] == "\\":
            out.append({"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}[cell[i + 1]])
            i += 2
        else:
            out.append(cell[i])
            i += 1
    return "".join(out)


def _jobs_file(path: Path, table: str) -> Path:
    config = path / "jobs.toml"
    config.write_text(
        "[jobs.j]\nsource = 'sql_database'\nurl = 'sqlite:///x.db'\nlake = 'file:lake'\n"
        f"[[jobs.j.tables]]\nname = {json.dumps(table)}\nprimary_key = ['id']\ncontract = 'contracts.shop:Customers'\n"
    )
    return config


@pytest.mark.parametrize("cell", ["a\tb", "line\nbreak", "back\\slash\\t", "cr\rhere", "plain"])
def test_a_piped_report_is_one_line_a_row_whatever_a_cell_holds(capsys, cell: str) -> None:
    from deltaferry.cli_common import emit, new_report

    report = new_report("table", "key", "reason")
    report.add_row("t", cell, "x")
    report.add_row("u", "k", cell)
    emit(report)
    header, *rows = capsys.readouterr().out.rstrip("\n").split("\n")
    assert header.split("\t") == ["table", "key", "reason"] and len(rows) == 2, rows
    cells = [[_unescape(c) for c in row.split("\t")] for row in rows]
    assert cells == [["t", cell, "x"], ["u", "k", cell]] and "\r" not in "".join(rows)


def test_an_error_naming_a_value_with_a_line_break_is_still_one_line(tmp_path) -> None:
    config = _jobs_file(tmp_path, "line\nbreak")
    result = CliRunner().invoke(cli, ["jobs", "--config", str(config)])
    assert result.exit_code == 2 and "table 'line\\nbreak'" in result.output, result.output
    assert result.output.count("\n") == 1, result.output


@pytest.mark.integration
def test_a_pipe_closed_early_ends_the_command_quietly(tmp_path) -> None:
    """The reader of the pipe is gone before the command writes: exit 141 (SIGPIPE's),
    nothing on stderr (a trial saw a BrokenPipeError traceback under `| head`)."""
    config = _jobs_file(tmp_path, "t")
    read, write = os.pipe()
    os.close(read)  # nobody will read what the command prints
    p = subprocess.run(
        [sys.executable, "-m", "deltaferry.cli", "jobs", "--config", str(config)],
        stdout=write, stderr=subprocess.PIPE, text=True, timeout=120, check=False,
    )  # fmt: skip
    os.close(write)
    assert p.returncode == 141 and p.stderr == "", (p.returncode, p.stderr)


def test_held_keys_holding_separators_read_one_way_only() -> None:
    """A composite text key is shown with its text quoted, so ``a='x, b=y'`` cannot be
    read as two parts (a trial: the list was ambiguous)."""
    from deltaferry.cli_quarantine import _key_text

    row = {"pk": json.dumps({"a": "x, b=y", "b": "z"}), "load_id": "l1", "check": "c"}
    other = {"pk": json.dumps({"a": "x", "b": "y, b=z"}), "load_id": "l1", "check": "c"}
    assert _key_text(row) == "a='x, b=y', b='z'"
    assert _key_text(row) != _key_text(other)
    assert _key_text({"pk": json.dumps({"id": 7, "n": None}), "load_id": "l", "check": "c"}) == (
        "id=7, n=NULL"
    )
