"""Settings of the rest_api source kind (read with the jobs file; never secrets).

``Job`` adds the job settings (``auth``, ``paginator``, ``headers``, ``max_pages``) and
``Table`` the table settings (``path``, ``params``, ``data_selector``, ``paginator``,
``cursor_param``, ``initial_value``, ``full_read_every``, ``cursor_unit``, ``max_pages``),
written as dlt's rest_api config (``full_read_every`` and ``cursor_unit`` are deltaferry's); each field says what it is for. ``auth`` is, for example,
``{ type = "bearer", token = "env:API_TOKEN" }``,
``{ type = "api_key", name = "X-API-Key", api_key = "env:KEY", location = "header" }`` or
``{ type = "http_basic", username = "u", password = "env:PW" }``; a ``paginator``
``"header_link"``, ``{ type = "cursor", cursor_path = "next", cursor_param = "cursor" }``,
``{ type = "offset", limit = 100 }``, ``{ type = "json_link", next_url_path = "next" }`` ...

A read that reaches ``max_pages`` (the table's, else the job's, else 100000) with more
pages to come fails the run naming the setting, as does a paginator that repeats a request
already sent or a page that repeats the previous page's records; nothing of that read is
published.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Self

from pydantic import field_validator, model_validator

from deltaferry.job_models import JobModel, TableModel, invalid, setting

AUTH_TYPES = ("api_key", "bearer", "http_basic", "oauth2_client_credentials")
PAGES = "a whole number of pages, 1 or more"
PAGINATOR = (
    'a paginator name such as "header_link", or a table such as '
    '{ type = "cursor", cursor_path = "next", cursor_param = "cursor" }'
)


class Job(JobModel):
    """A rest_api job: the API's base url, how to sign in and page."""

    auth: dict[str, Any] = setting(
        None,
        "dlt's rest_api auth config; any string value may be env:VAR",
        f"a table with type = one of {', '.join(AUTH_TYPES)}",
        repr=False,
    )
    paginator: str | dict[str, Any] = setting(
        None, "the default paginator of every table (dlt's rest_api paginator config)", PAGINATOR
    )
    headers: dict[str, Any] = setting(
        None, "extra request headers", "a table of names and values", repr=False
    )
    max_pages: int = setting(
        None, "the default page cap of every table (default 100000)", PAGES, ge=1
    )

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        if not url.startswith(("http://", "https://", "env:")):
            raise ValueError("url must be the API's http(s) base url (or env:VAR)")
        return url

    @field_validator("auth")
    @classmethod
    def _auth_type(cls, auth: dict[str, Any]) -> dict[str, Any]:
        if auth.get("type") not in AUTH_TYPES:
            raise invalid()
        return auth


class Table(TableModel):
    """An endpoint of a rest_api job."""

    # an API has no key set to compare cheaply: deletes are soft (a flag in the record) or none
    no_reconcile: ClassVar[str | None] = (
        "deletes = 'reconcile' is not available for a REST API (it has no key set to "
        "compare); use 'soft:<column>' if records carry a deleted flag, or 'none'"
    )

    path: str = setting(
        None, "the endpoint, relative to url (default: the table's name)", "a string"
    )
    params: dict[str, Any] = setting(
        None, "fixed query parameters", "a table of names and values", repr=False
    )
    data_selector: str = setting(
        None, "JSONPath of the records in a page (default: found by dlt)", "a string"
    )
    paginator: str | dict[str, Any] = setting(
        None, "this table's paginator (default: the job's)", PAGINATOR
    )
    cursor_param: str = setting(
        None,
        "the query parameter that asks for records changed since a cursor value; without it "
        "every run reads all pages",
        "a string",
    )
    initial_value: Any = setting(None, "the cursor value of the first run", "a cursor value")
    full_read_every: str = setting(
        None,
        "read the table whole (from initial_value, or without cursor_param) when the last "
        "whole read started this long ago: what a read asked with cursor_param cannot see "
        "(a record given an older cursor value; without initial_value, a record with a null "
        "cursor of an API whose filter drops nulls) is read at least this often",
        'a duration: a whole number from 1 to 999999 and a unit, s, m, h or d ("12h", "7d")',
        pattern=r"^[1-9][0-9]{0,5}[smhd]$",
    )
    cursor_unit: Literal["s", "ms", "us", "ns", "number"] = setting(
        None,
        "what a number cursor value is: a Unix time in seconds, milliseconds, microseconds "
        "or nanoseconds, or a number that is not a time; a time after now is not sent as "
        "cursor_param (default: the unit the first read's numbers mostly have by size, "
        "seconds from 1e9, milliseconds from 1e12 to 1e15, else not a time; learned then and "
        "kept until a reset)",
        'one of "s", "ms", "us", "ns", "number"',
    )
    max_pages: int = setting(
        None, "the most pages one read of this table may take (default: the job's)", PAGES, ge=1
    )

    @model_validator(mode="after")
    def _cursor_param_filters_the_cursor(self) -> Self:
        if "cursor_param" in self.model_fields_set and not self.cursor:
            raise ValueError("cursor_param needs a cursor (the record field it filters on)")
        if self.cursor and self.cursor.startswith("$"):
            from sources.names import name_problem
            from sources.rest_api.reads import api_cursor_path
            from sources.staging import document_column

            api_cursor_path(self.cursor)  # a path into the record must parse, to one value
            field = document_column(self.cursor)
            if field is None:
                raise ValueError(
                    f"cursor {self.cursor!r} does not start with a field of the record "
                    "('$.meta.updated')"
                )
            problem = name_problem(field)
            if problem:  # the field is staged as a column holding the document
                raise ValueError(
                    f"cursor {self.cursor!r}: its first field {field!r} {problem}; the field "
                    "is staged as a column of its own"
                )
        if (
            "full_read_every" in self.model_fields_set
            and "cursor_param" not in self.model_fields_set
        ):
            raise ValueError(
                "full_read_every needs cursor_param (without it every run reads every page)"
            )
        if "cursor_unit" in self.model_fields_set and "cursor_param" not in self.model_fields_set:
            raise ValueError(
                "cursor_unit needs cursor_param (it says which cursor values are after now, "
                "which are never sent as cursor_param)"
            )
        return self
