"""Names every source kind stages with (constants only: imported by the light modules)."""

from __future__ import annotations

# dlt dataset (DuckDB schema) that holds the staged tables inside staging.duckdb
STAGING_DATASET = "raw"
# column dlt writes on every staged row: the load that last changed it
LOAD_ID_COLUMN = "_dlt_load_id"
# tombstone flag set on rows found deleted by key-set reconciliation
DELETED_COLUMN = "_df_deleted"
# content hash of each staged row of a table without a cursor (full-compare mode)
HASH_COLUMN = "_df_hash"
# modification time (ns) of the file a staged row came from (file drops): an older file
# read later does not overwrite it
FILE_TIME_COLUMN = "_df_file_ns"
# internal columns never published
INTERNAL_COLUMNS = frozenset(
    {LOAD_ID_COLUMN, "_dlt_id", DELETED_COLUMN, HASH_COLUMN, FILE_TIME_COLUMN}
)
# columns every published data object carries beside the source's (the change kind and
# its sequence number in the batch): a source column may not have these names
OP_COLUMN = "_op"
SEQ_COLUMN = "_seq"
LAKE_COLUMNS = frozenset({OP_COLUMN, SEQ_COLUMN})
