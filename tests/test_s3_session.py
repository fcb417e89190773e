"""The S3 sessions deltaferry makes (``destinations/s3.py:aws_session``) share botocore's
parsed data files, and nothing else: each new session reads credentials and region from
the environment as it is then."""

from __future__ import annotations

import pytest

from destinations import s3


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "DELTAFERRY_ASSUME_ROLE_ARN", "AWS_DATA_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "first-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "first-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    return monkeypatch


def test_sessions_share_the_parsed_models_but_read_credentials_and_region_anew(aws_env):
    first = s3.aws_session()
    first.client("s3")
    aws_env.setenv("AWS_ACCESS_KEY_ID", "second-key")
    aws_env.setenv("AWS_DEFAULT_REGION", "us-west-2")
    second = s3.aws_session()
    client = second.client("s3")

    loader = first._session.get_component("data_loader")
    assert second._session.get_component("data_loader") is loader
    # what the first client parsed is not parsed again for the second
    assert any(key[0] == "load_service_model" for key in loader._cache)
    # boto3 adds its data folder to the loader for every session: it is there once
    assert len(loader.search_paths) == len(set(loader.search_paths))
    # credentials and region are the second session's own, read when it was made
    assert first.get_credentials().access_key == "first-key"
    assert second.get_credentials().access_key == "second-key"
    assert client.meta.region_name == "us-west-2"


def test_another_data_path_gets_its_own_loader(aws_env, tmp_path):
    default = s3.aws_session()._session.get_component("data_loader")
    aws_env.setenv("AWS_DATA_PATH", str(tmp_path))
    other = s3.aws_session()._session.get_component("data_loader")
    assert other is not default
    assert str(tmp_path) in other.search_paths
