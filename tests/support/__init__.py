"""Support code of the test suite: test servers (S3, PostgreSQL, REST API), fault injection,
the conformance harness, the fidelity suite and the contracts of the test tables."""
