"""SQL tables (any database SQLAlchemy reaches) as a deltaferry source kind.

The package itself is light on purpose: reading a jobs file imports ``settings.py``, and a
run that finds nothing changed (``quiet.py``) needs neither dlt nor the extraction. The
extraction is in ``source.py`` (``extract``), which ``sources.source_module`` imports when
a run reads the source; the preflight, without dlt, in ``preflight.py``
(``preflight_source``, which ``deltaferry run`` finds through ``sources.preflight_module``).
"""
