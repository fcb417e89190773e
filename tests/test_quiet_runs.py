"""A SQL read whose rows all equal their staged versions loads nothing (issue 16, the no-op
run): no dlt normalize or load, no load id, nothing for the plan to consume; and what a
load of no rows still does (a column the source gained, NULL in every row) still happens.

Checked from outside deltaferry: staging's load records (``raw._dlt_loads``) and columns
read with duckdb, the replica against the source read with sqlite3."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow


def _staging(home: Path) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(home / "shop" / "staging.duckdb"), read_only=True)


def _loads(home: Path) -> int:
    con = _staging(home)
    try:
        return con.execute("SELECT count(*) FROM raw._dlt_loads").fetchone()[0]
    finally:
        con.close()


def _staged_columns(home: Path, table: str) -> set[str]:
    con = _staging(home)
    try:
        return {
            r[0]
            for r in con.execute(
                "SELECT column_name FROM duckdb_columns() "
                "WHERE schema_name = 'raw' AND table_name = ?",
                [table],
            ).fetchall()
        }
    finally:
        con.close()


def _pending_packages(home: Path) -> list[Path]:
    """dlt's extracted or normalized packages left under the job's pipelines dir (dlt's
    layout: ``<pipeline>/normalize/extracted/<load id>``, ``<pipeline>/load/normalized/...``)."""
    workdirs = [p.parent for p in home.rglob("normalize") if p.is_dir()]
    assert workdirs, f"no dlt pipeline working dir under {home}"  # else nothing to look in
    return [
        package
        for w in workdirs
        for folder in (w / "normalize" / "extracted", w / "load" / "normalized")
        for package in (folder.iterdir() if folder.is_dir() else ())
    ]


def _replica_is_source(shop, replica: Path) -> None:  # noqa: ANN001
    sql = "SELECT id, name, country FROM customers WHERE deleted_at IS NULL ORDER BY id"
    want = shop.con.execute(sql).fetchall()
    con = duckdb.connect(str(replica), read_only=True)
    try:
        got = con.execute("SELECT id, name, country FROM customers ORDER BY id").fetchall()
    finally:
        con.close()
    assert got == want


def test_a_run_with_nothing_changed_loads_nothing_and_the_next_change_goes_out(
    shop_job, shop, home
):
    shop.round(15, 10, churn=0)
    first = shop_job.sync()["tables"]
    assert first["customers"]["batch"] == 1 and first["orders"]["batch"] == 1
    loads = _loads(home)

    for _ in range(2):  # the window's boundary rows read again, unchanged: no load
        quiet = shop_job.sync()["tables"]
        assert quiet["customers"]["batch"] is None and quiet["orders"]["batch"] is None
        assert _loads(home) == loads
        assert _pending_packages(home) == []

    # the dropped packages left dlt able to load the next change as always
    shop.con.execute(
        "UPDATE customers SET country = 'JP', updated_at = ? WHERE id = 2", (shop._tick(),)
    )
    shop.con.commit()
    out = shop_job.sync()["tables"]["customers"]
    assert (out["batch"], out["rows"]) == (2, 1)
    assert _loads(home) == loads + 1
    shop_job.pull()
    _replica_is_source(shop, shop_job.replica)


def test_a_column_gained_null_in_every_row_is_still_staged_by_a_load_of_no_rows(
    shop_job, shop, home
):
    """No row's content hash changes (a NULL is no content), so the read finds no changed
    row; the load of its empty file is what gives staging the column. Skipped, the source's
    new column would make every later run read the table whole again."""
    shop_job.write_config(drift="evolve")  # the contract takes the new column as it comes
    shop.round(12, 0, churn=0)
    assert shop_job.sync()["tables"]["customers"]["batch"] == 1
    assert "note" not in _staged_columns(home, "customers")
    shop.con.execute("ALTER TABLE customers ADD COLUMN note TEXT")
    shop.con.commit()
    loads = _loads(home)

    assert shop_job.sync()["tables"]["customers"]["batch"] is None  # no row changed
    assert "note" in _staged_columns(home, "customers")
    assert _loads(home) > loads
    loads = _loads(home)
    # the column is staged now: the next run reads the window only, and loads nothing
    assert shop_job.sync()["tables"]["customers"]["batch"] is None
    assert _loads(home) == loads

    shop.con.execute(
        "UPDATE customers SET note = 'vip', updated_at = ? WHERE id = 3", (shop._tick(),)
    )
    shop.con.commit()
    out = shop_job.sync()["tables"]["customers"]
    assert (out["batch"], out["rows"]) == (2, 1)


# --- the check itself, on a real dlt pipeline (no Prefect, no source database) --------


def _pipeline(tmp_path: Path, table: pyarrow.Table):  # noqa: ANN202
    """A dlt pipeline into a DuckDB file under ``tmp_path`` with ``table`` extracted as
    the resource ``t`` (not normalized, not loaded)."""
    import dlt

    pipeline = dlt.pipeline(
        pipeline_name="quiet",
        pipelines_dir=str(tmp_path / "pipelines"),
        destination=dlt.destinations.duckdb(str(tmp_path / "staging.duckdb")),
        dataset_name="raw",
    )
    pipeline.extract(dlt.resource(table, name="t"))
    return pipeline


def test_extracted_nothing_is_true_only_for_empty_files_staging_already_has(tmp_path, caplog):
    from sources.pipeline import abort_pending, extracted_nothing

    empty = pyarrow.table(
        {"id": pyarrow.array([], pyarrow.int64()), "v": pyarrow.array([], pyarrow.string())}
    )
    p = _pipeline(tmp_path, empty)
    assert p.list_extracted_load_packages()  # an empty Arrow read still writes a file
    assert extracted_nothing(p, {"t": ["id", "v", "_df_hash"]})
    assert not extracted_nothing(p, {"t": ["id"]})  # 'v' not staged: its load stages it
    assert not extracted_nothing(p, {"t": []})  # never staged: its load makes the table
    assert not extracted_nothing(p, {"other": ["id", "v"]})  # a file of no table read
    abort_pending(p, "test")
    assert p.list_extracted_load_packages() == [] and extracted_nothing(p, {"t": ["id", "v"]})

    one = _pipeline(tmp_path / "one", pyarrow.table({"id": [1], "v": ["a"]}))
    assert not extracted_nothing(one, {"t": ["id", "v"]})  # a row

    pending = _pipeline(tmp_path / "pending", empty)
    pending.normalize()  # a package normalized, not loaded (a crash before the load)
    assert pending.list_normalized_load_packages()
    assert not extracted_nothing(pending, {"t": ["id", "v"]})

    broken = _pipeline(tmp_path / "broken", empty)
    for package in broken.list_extracted_load_packages():
        for jobs in broken.get_load_package_info(package).jobs.values():
            for job in jobs:
                Path(job.file_path).write_bytes(b"not parquet")
    with caplog.at_level("WARNING"):
        assert not extracted_nothing(broken, {"t": ["id", "v"]})  # a doubt loads as always
    assert "not inspected (loaded as always)" in caplog.text
