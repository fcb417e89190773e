"""Sources: dlt pipelines that load a job's tables into its DuckDB staging file."""
