"""Prefect flows: one sync flow per job run."""
