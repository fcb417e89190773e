"""``deltaferry schema jobs``: the JSON Schema of the jobs file, for editors.

Registered on the main command group by ``deltaferry/cli.py`` (``register``). The schema
is made from the jobs file's models (``deltaferry/job_models.py``), so it says what
``load_jobs`` accepts; ``deltaferry.schema.json`` in the repository is its output.
"""

from __future__ import annotations

from types import ModuleType

import click

from deltaferry.cli_common import one_line_errors


def register(ui: ModuleType) -> None:
    @ui.cli.group("schema")
    def schema() -> None:
        """JSON Schemas of deltaferry's files, for editors and checks."""

    @schema.command("jobs")
    @one_line_errors
    def jobs() -> None:
        """Print the JSON Schema of the jobs file (deltaferry.toml): every key of a job and
        a table, per source kind, with its type, default and meaning. Point your editor at
        it, e.g. a first line `#:schema ./deltaferry.schema.json` (Even Better TOML, taplo)."""
        from deltaferry.job_models import schema_text

        click.echo(schema_text(), nl=False)
