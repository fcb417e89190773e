"""deltaferry: checkpointed, verifiable incremental sync to an S3 lake and back."""

from __future__ import annotations

__version__ = "0.1.0"
