"""SQL tables (any database SQLAlchemy reaches) as a deltaferry source kind.

The package itself is light on purpose: reading a jobs file imports ``settings.py``, and a
run that finds nothing changed (``quiet.py``) needs neither dlt nor the extraction. The
extraction and the preflight are in ``source.py`` (``extract``, ``preflight_source``),
which ``sources.source_module`` imports when a run reads the source.
"""
