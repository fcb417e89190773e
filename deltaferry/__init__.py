"""deltaferry: checkpointed, verifiable incremental sync to an S3 lake and back."""

from __future__ import annotations

from deltaferry import fastexit

__version__ = "0.1.0"

fastexit.install()  # every entry point (CLI, flows, deployments) imports this package
