"""Settings of the rest_api source kind (read with the jobs file; never secrets).

Job settings:

- ``url``: the API's base url (or ``env:VAR``);
- ``auth``: dlt's rest_api auth config, e.g. ``{ type = "bearer", token = "env:API_TOKEN" }``,
  ``{ type = "api_key", name = "X-API-Key", api_key = "env:KEY", location = "header" }`` or
  ``{ type = "http_basic", username = "u", password = "env:PW" }``; any string value may be
  ``env:VAR``;
- ``paginator``: the default paginator of every table (dlt's rest_api paginator config:
  ``"header_link"``, ``{ type = "cursor", cursor_path = "next", cursor_param = "cursor" }``,
  ``{ type = "offset", limit = 100 }``, ``{ type = "json_link", next_url_path = "next" }`` ...);
- ``headers``: extra request headers;
- ``max_pages``: the default page cap of every table (default 100000).

Table settings:

- ``path``: the endpoint, relative to ``url`` (default: the table's name);
- ``params``: fixed query parameters;
- ``data_selector``: JSONPath of the records in a page (default: found by dlt);
- ``paginator``: this table's paginator (default: the job's);
- ``cursor_param``: the query parameter that asks for records changed since a cursor value
  (``since``, ``updated_after`` ...); without it the whole collection is read each run and
  only changed records are staged;
- ``initial_value``: the cursor value of the first run;
- ``max_pages``: the most pages one read of this table may take (default: the job's
  ``max_pages``, else 100000). A read that reaches it with more pages to come fails the
  run naming the setting, as does a paginator that repeats a request already sent or a
  page that repeats the previous page's records; nothing of that read is published.
"""

from __future__ import annotations

from typing import Any

JOB_SETTINGS = frozenset({"auth", "paginator", "headers", "max_pages"})
TABLE_SETTINGS = frozenset(
    {"path", "params", "data_selector", "paginator", "cursor_param", "initial_value", "max_pages"}
)
# an API has no key set to compare cheaply: deletes are soft (a flag in the record) or none
DEFAULT_DELETES = "none"

_AUTH_TYPES = {"bearer", "api_key", "http_basic", "oauth2_client_credentials"}


def check(job: Any) -> None:
    from deltaferry.errors import ConfigError

    where = f"job '{job.name}'"
    auth = job.options.get("auth")
    if auth is not None:
        if not isinstance(auth, dict) or auth.get("type") not in _AUTH_TYPES:
            raise ConfigError(
                f"{where}: auth must be a table with type = one of {', '.join(sorted(_AUTH_TYPES))}"
            )
    for key in ("headers",):
        if key in job.options and not isinstance(job.options[key], dict):
            raise ConfigError(f"{where}: {key} must be a table of names and values")
    _check_max_pages(job.options, where)
    if not (job.url.startswith(("http://", "https://", "env:"))):
        raise ConfigError(f"{where}: url must be the API's http(s) base url (or env:VAR)")
    for t in job.tables:
        tw = f"{where} table '{t.name}'"
        if t.deletes == "reconcile":
            raise ConfigError(
                f"{tw}: deletes = 'reconcile' is not available for a REST API (it has no key set "
                "to compare); use 'soft:<column>' if records carry a deleted flag, or 'none'"
            )
        _check_max_pages(t.options, tw)
        if "cursor_param" in t.options and not t.cursor:
            raise ConfigError(f"{tw}: cursor_param needs a cursor (the record field it filters on)")
        for key in ("params",):
            if key in t.options and not isinstance(t.options[key], dict):
                raise ConfigError(f"{tw}: {key} must be a table of names and values")
        for key in ("path", "data_selector", "cursor_param"):
            if key in t.options and not isinstance(t.options[key], str):
                raise ConfigError(f"{tw}: {key} must be a string")


def _check_max_pages(options: dict[str, Any], where: str) -> None:
    from deltaferry.errors import ConfigError

    value = options.get("max_pages", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: max_pages must be a whole number of pages, 1 or more")
