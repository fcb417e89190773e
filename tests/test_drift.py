"""Source drift under each policy: the shop's customers table gains a column.

freeze fails the run with the diff and publishes nothing; quarantine holds back the rows
that carry a value in the new column and publishes the rest; evolve publishes every row
without the new column and drafts the next contract version, which validates the rows
with it. A batch cut under a drift policy rebuilds byte-identically after a crash.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from typing import Optional

import pandera.pandas as pa
import pytest
from pandera.typing import Series

from deltaferry.errors import SchemaDrift
from deltaferry.state import StateStore
from destinations.manifest import manifest_key


def _drift(shop, loyal: list[int], moved: list[int]) -> None:
    """The source adds a column; some customers get a value in it, others change country."""
    shop.con.execute("ALTER TABLE customers ADD COLUMN loyalty TEXT")
    for cid in loyal:
        shop.con.execute(
            "UPDATE customers SET loyalty = 'gold', updated_at = ? WHERE id = ?",
            (shop._tick(), cid),
        )
    for cid in moved:
        shop.con.execute(
            "UPDATE customers SET country = 'JP', updated_at = ? WHERE id = ?", (shop._tick(), cid)
        )
    shop.con.commit()


def _ops(step: str) -> list[str]:
    with StateStore("shop").connect(read_only=True) as con:
        return [
            r[0]
            for r in con.execute("SELECT detail FROM ops_log WHERE step = ?", [step]).fetchall()
        ]


def test_freeze_fails_the_run_with_the_diff_and_publishes_nothing(shop_job, shop):
    shop.round(10, 4, churn=0)
    shop_job.sync()
    _drift(shop, loyal=[1, 2], moved=[3])
    from datetime import datetime, timezone

    from tests.test_run_report import _events

    since = datetime.now(timezone.utc)
    with pytest.raises(SchemaDrift) as e:
        shop_job.sync()
    message = str(e.value)
    events = _events("deltaferry.schema.drift", since, until=bool)
    assert events and events[0]["payload"]["detail"] == message
    assert _ops("drift") == [message]
    assert "job 'shop' table 'customers'" in message
    assert "new column loyalty (VARCHAR)" in message and "drift = freeze" in message
    assert "contract contracts.shop:Customers v1" in message and "nothing published" in message
    assert shop_job.lake().get(manifest_key("shop", "customers", 2)) is None
    assert StateStore("shop").pending_plan("customers") is None
    with pytest.raises(SchemaDrift):  # and again on the next run, until the contract changes
        shop_job.sync()


def test_quarantine_holds_rows_with_a_value_in_the_new_column_and_publishes_the_rest(
    shop_job, shop
):
    from datetime import datetime, timezone

    from tests.test_run_report import _events

    shop_job.write_config(drift="quarantine")
    shop.round(10, 4, churn=0)
    shop_job.sync()
    _drift(shop, loyal=[1, 2], moved=[3, 4])
    since = datetime.now(timezone.utc)
    out = shop_job.sync()
    events = _events("deltaferry.schema.drift", since, until=bool)
    assert events and "new column loyalty" in events[0]["payload"]["detail"]
    # 3 and 4 (and the cursor's boundary row, re-read with its new column) are published
    assert 2 <= out["tables"]["customers"]["rows"] <= 3
    assert out["tables"]["customers"]["quarantined"] == 2
    assert "loyalty" in out["drift"]["customers"]
    manifest = json.loads(shop_job.lake().get(manifest_key("shop", "customers", 2)))
    assert manifest["drift"]["policy"] == "quarantine"
    assert "loyalty" in manifest["drift"]["held"]
    with StateStore("shop").connect(read_only=True) as con:
        held = con.execute(
            'SELECT pk, field, "check", reason FROM quarantine WHERE tbl = ? ORDER BY pk',
            ["customers"],
        ).fetchall()
    assert [(json.loads(h[0])["id"], h[1], h[2]) for h in held] == [
        (1, "loyalty", "schema drift"),
        (2, "loyalty", "schema drift"),
    ]
    assert "not in contract contracts.shop:Customers v1" in held[0][3]
    assert any("quarantined" in d for d in _ops("drift"))
    shop_job.pull()
    import duckdb

    con = duckdb.connect(str(shop_job.replica), read_only=True)
    try:
        cols = [r[0] for r in con.execute("DESCRIBE customers").fetchall()]
        rows = {
            r[0]: r[1:] for r in con.execute("SELECT id, country, _seq FROM customers").fetchall()
        }
    finally:
        con.close()
    assert "loyalty" not in cols
    assert rows[3][0] == rows[4][0] == "JP"
    assert rows[1][1] <= 10 and rows[2][1] <= 10  # held: still their first batch's versions


def _load_draft(path, monkeypatch):  # noqa: ANN001, ANN202
    """Import a drafted contract module from its file, as ``draft_<file stem>``."""
    spec = importlib.util.spec_from_file_location(f"draft_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_evolve_publishes_without_the_column_and_drafts_the_next_version(
    shop_job, shop, home, monkeypatch
):
    import pandas as pd

    from contracts import Contract, MigrationError

    shop_job.write_config(drift="evolve")
    shop.round(10, 4, churn=0)
    shop_job.sync()
    _drift(shop, loyal=[1, 2], moved=[3])
    out = shop_job.sync()
    assert out["tables"]["customers"]["rows"] >= 3  # 1, 2, 3 (and the cursor's boundary row)
    assert out["tables"]["customers"]["quarantined"] == 0
    manifest = json.loads(shop_job.lake().get(manifest_key("shop", "customers", 2)))
    assert manifest["drift"]["excluded"] == ["loyalty"]
    draft = home / "shop" / "drafts" / "customers_v2.py"
    assert str(draft) in out["drift"]["customers"]
    module = _load_draft(draft, monkeypatch)
    v2 = Contract("draft:CustomersV2", module.CustomersV2)
    assert v2.version == 2 and "loyalty" in v2.columns
    # its migrations: v1 rows get the new column, NULL; back to v1 drops it, and refuses a
    # row that holds a value there (v1 has nowhere to keep it)
    up = module.CustomersV2.upgrade(pd.DataFrame({"id": [1, 2]}))
    assert list(up.columns) == ["id", "loyalty"] and up["loyalty"].isna().all()
    down = module.CustomersV2.downgrade(pd.DataFrame({"id": [1], "loyalty": [None]}))
    assert list(down.columns) == ["id"]
    with pytest.raises(MigrationError, match="1 row"):
        module.CustomersV2.downgrade(pd.DataFrame({"id": [1, 2], "loyalty": ["gold", None]}))
    row = {
        "id": 1,
        "name": "customer 1",
        "email": "c1@example.com",
        "country": "DE",
        "updated_at": pd.Timestamp("2026-01-01"),
        "deleted_at": pd.NaT,
    }
    assert not v2.validate(
        pd.DataFrame([{**row, "loyalty": "gold"}, {**row, "id": 2, "loyalty": None}])
    ).failed_rows
    shop_job.pull()
    assert all(c.equal for c in shop_job.compare())  # every published column converged


def test_a_batch_cut_under_a_drift_policy_rebuilds_byte_identically(shop_job, shop, monkeypatch):
    from deltaferry.failpoints import FailpointHit

    shop_job.write_config(drift="quarantine")
    shop.round(10, 4, churn=0)
    shop_job.sync()
    _drift(shop, loyal=[5], moved=[6, 7])
    monkeypatch.setenv("DELTAFERRY_FAILPOINT", "after_upload")
    monkeypatch.setenv("DELTAFERRY_FAILPOINT_ACTION", "raise")
    with pytest.raises(FailpointHit):
        shop_job.sync()
    planned = StateStore("shop").pending_plan("customers")
    assert planned is not None and json.loads(planned.manifest)["drift"]["held"]
    monkeypatch.delenv("DELTAFERRY_FAILPOINT")
    out = shop_job.sync()
    assert any("rebuilt byte-identically" in r for r in out["recovered"]), out["recovered"]
    stored = shop_job.lake().get(manifest_key("shop", "customers", 2))
    assert stored == planned.manifest


def _staged(columns: dict[str, str]):  # noqa: ANN202
    import duckdb

    con = duckdb.connect()
    con.execute("CREATE SCHEMA staging")
    defs = ", ".join(f'"{c}" {t}' for c, t in columns.items())
    con.execute(f"CREATE TABLE staging.items ({defs})")
    return con


class ItemsV1(pa.DataFrameModel):
    __version__ = 1
    id: Series[int]
    price: Series[float]
    note: Optional[Series[str]]  # optional: never staged is fine
    code: Series[str] = pa.Field(nullable=True)  # required column, nullable

    class Config:
        strict = True


class Loose(ItemsV1):
    class Config:
        strict = False


def test_detection_rules_and_drafts_for_awkward_names(tmp_path, monkeypatch) -> None:
    import pandas as pd

    from contracts import Contract
    from contracts.drift import detect, draft_next_version

    contract = Contract("tests:ItemsV1", ItemsV1)
    con = _staged(
        {"id": "BIGINT", "price": "DOUBLE", "price__v_text": "VARCHAR", "class": "VARCHAR",
         "_dlt_id": "VARCHAR", "_dlt_load_id": "VARCHAR"}
    )  # fmt: skip
    drift = detect(con, "staging", "items", contract, set())
    assert drift.new == {"class": "VARCHAR"}
    assert drift.retyped == {"price__v_text": ("price", "text")}
    assert drift.dropped == []  # 'code' is nullable, 'note' optional: neither blocks
    assert drift.blocking

    assert not detect(con, "staging", "items", Contract("tests:Loose", Loose), set()).new

    gone = detect(_staged({"id": "BIGINT", "code": "VARCHAR"}), "staging", "items", contract, set())
    assert gone.dropped == ["price"] and not gone.blocking  # left to the contract
    source = draft_next_version(contract, drift, {"class": "VARCHAR"})
    assert "class_: Series[str] = pa.Field(alias='class', nullable=True)" in source
    path = tmp_path / "items_v2.py"
    path.write_text(source)
    module = _load_draft(path, monkeypatch)
    v2 = Contract("draft:ItemsV2", module.ItemsV2)
    frame = pd.DataFrame({"id": [1], "price": [2.5], "code": [None], "class": ["a"]})
    assert v2.version == 2 and not v2.validate(frame).failed_rows


def test_a_nullable_column_the_source_dropped_is_drift_unless_deprecated() -> None:
    """A nullable contract column staged before and no longer at the source is dropped
    (its rows would publish NULL over readers' values): freeze stops for it. Not when the
    source still has it, or says nothing of its columns, not when this version or one
    before it deprecates it, not when never staged."""
    from contracts import Contract
    from contracts.drift import detect

    contract = Contract("tests:ItemsV1", ItemsV1)
    con = _staged({"id": "BIGINT", "price": "DOUBLE", "code": "VARCHAR", "k": "INTEGER"})
    con.execute("INSERT INTO staging.items VALUES (1, 2.5, NULL, 1), (2, 3.5, 'x', 2)")
    source = {"id", "price"}
    drift = detect(con, "staging", "items", contract, {"k"}, ("s.k = 1", []), source)
    # not 'note' (optional, never staged): a contract may list what a source lacks
    assert drift.dropped_nullable == ["code"] and drift.blocking and drift.dropped == []
    assert "column code was dropped by the source (nullable" in drift.describe()
    assert "__deprecated__" in drift.remedy("j", "items")
    # a value on an older row of the cut changes nothing: rows without one hold one by one
    assert detect(con, "staging", "items", contract, {"k"}, ("true", []), source).dropped_nullable == ["code"]
    assert not detect(con, "staging", "items", contract, {"k"}, ("s.k = 1", []), {*source, "code"})
    assert not detect(con, "staging", "items", contract, {"k"}, ("s.k = 1", []), None)

    class ItemsV2(ItemsV1):
        __version__ = 2
        __deprecated__ = {"code": 3}  # noqa: RUF012

    assert not detect(con, "staging", "items", Contract("tests:ItemsV2", ItemsV2), {"k"}, ("s.k = 1", []), source)

    class ItemsV3(ItemsV2):  # a draft from v2: inherits code, not v2's __deprecated__
        __version__ = 3

    assert not detect(con, "staging", "items", Contract("tests:ItemsV3", ItemsV3), {"k"}, ("s.k = 1", []), source)


def test_a_draft_neither_adds_nor_deprecates_a_column_only_spelled_anew_in_case() -> None:
    """The source renamed code to Code: a replica (DuckDB) cannot hold both, and deprecating
    code would publish it NULL. The draft says so and leaves both out (the rows stay held
    until the source spells it as before); other drift in it is drafted as always."""
    from contracts import Contract
    from contracts.drift import Drift, draft_next_version

    drift = Drift(new={"Code": "VARCHAR", "extra": "BIGINT"}, dropped_nullable=["code"])
    source = draft_next_version(Contract("tests:ItemsV1", ItemsV1), drift, {})
    compile(source, "draft", "exec")
    assert "'Code': the source's new spelling of 'code'" in source
    assert "Code: Series" not in source and "__deprecated__" not in source
    assert "extra: Series[int] = pa.Field(nullable=True)" in source
    assert "for column in ['extra']:" in source


def test_a_draft_compiles_and_migrates_for_names_holding_braces_and_backslashes(
    tmp_path, monkeypatch
) -> None:
    """A column name may hold ``{``, ``}`` or a backslash (the naming rules refuse quotes and
    line breaks only): the draft must still compile (else every ``evolve`` run of the table
    fails) and its migrations name the column as it is. A draft whose source dropped a
    required column has no ``downgrade``: its rows cannot go back to the version before."""
    import pandas as pd

    from contracts import Contract, MigrationError
    from contracts.drift import detect, draft_next_version

    contract = Contract("tests:ItemsV1", ItemsV1)
    odd = "a{b\\N}"
    drift = detect(
        _staged({"id": "BIGINT", "price": "DOUBLE", odd: "VARCHAR"}),
        "staging",
        "items",
        contract,
        set(),
    )
    assert drift.new == {odd: "VARCHAR"}
    source = draft_next_version(contract, drift, {odd: "VARCHAR"})
    path = tmp_path / "items_odd_v2.py"
    path.write_text(source)
    module = _load_draft(path, monkeypatch)
    assert "Chain(ItemsV1, ItemsV2)" in source  # one class: the chain starts with it
    up = module.ItemsV2.upgrade(pd.DataFrame({"id": [1]}))
    assert list(up.columns) == ["id", odd]
    with pytest.raises(MigrationError, match=r"hold a value in a\{b\\N\}"):
        module.ItemsV2.downgrade(pd.DataFrame({"id": [1], odd: ["x"]}))
    assert list(module.ItemsV2.downgrade(pd.DataFrame({"id": [1], odd: [None]})).columns) == ["id"]

    gone = detect(
        _staged({"id": "BIGINT", "code": "VARCHAR", odd: "VARCHAR"}),
        "staging",
        "items",
        contract,
        {"id", "code", odd},
    )
    gone.dropped = ["price"]  # required by v1, no longer at the source
    dropped = draft_next_version(contract, gone, {odd: "VARCHAR"})
    compile(dropped, "draft", "exec")
    assert "def upgrade(frame)" in dropped and "def downgrade(frame)" not in dropped


def test_a_new_column_the_source_dropped_again_names_the_reset_not_the_contract() -> None:
    """A strict contract stopped for a new column; the source then dropped it, but staged
    rows not yet published still hold its values, so freeze still stops: the fix named is
    a reset (or the column in the contract), not only "add the new column(s)", which was
    wrong once the source no longer has it (fresh-user trial)."""
    from contracts import Contract
    from contracts.drift import detect

    contract = Contract("tests:ItemsV1", ItemsV1)
    con = _staged({"id": "BIGINT", "price": "DOUBLE", "code": "VARCHAR", "e1": "VARCHAR"})
    con.execute("INSERT INTO staging.items VALUES (1, 2.5, NULL, 'x1')")
    still = detect(con, "staging", "items", contract, set(), ("true", []), {"id", "price", "code", "e1"})
    assert still.new == {"e1": "VARCHAR"} and still.new_gone == []
    assert "add the new column(s) to the contract" in still.remedy("j", "items")
    assert "reset" not in still.remedy("j", "items")
    gone = detect(con, "staging", "items", contract, set(), ("true", []), {"id", "price", "code"})
    assert gone.new == {"e1": "VARCHAR"} and gone.new_gone == ["e1"] and gone.blocking
    remedy = gone.remedy("j", "items")
    assert "the source no longer has e1" in remedy and "deltaferry reset j --table items" in remedy
    assert "add the new column(s) to the contract" not in remedy
