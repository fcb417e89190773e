"""Lake stores: create-only manifests on both backends, and listing."""

from __future__ import annotations

import threading

import pytest

from destinations.lake import FileLakeStore, open_lake, parse_lake_url
from deltaferry.errors import ConfigError


@pytest.fixture(params=["file", "s3"])
def lake(request, tmp_path, bucket):
    if request.param == "file":
        return open_lake(f"file://{tmp_path}/lake")
    return open_lake(f"s3://{bucket}/prefix")


def test_put_if_absent_creates_once_and_never_overwrites(lake):
    lake.check()
    assert lake.put_if_absent("t/manifests/000000000001.json", b"first")
    assert not lake.put_if_absent("t/manifests/000000000001.json", b"second")
    assert lake.get("t/manifests/000000000001.json") == b"first"
    assert lake.get("t/manifests/000000000002.json") is None
    lake.put("t/data/a.parquet", b"x")
    assert lake.list("t/") == ["t/data/a.parquet", "t/manifests/000000000001.json"]


def test_concurrent_creators_exactly_one_wins(lake):
    lake.check()
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def create(i: int) -> None:
        barrier.wait()
        results.append(
            lake.put_if_absent("race/manifests/000000000001.json", f"writer {i}".encode())
        )

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    winner = lake.get("race/manifests/000000000001.json")
    assert winner is not None and winner.startswith(b"writer ")


def test_file_lake_leaves_no_temporary_files(tmp_path):
    lake = FileLakeStore(str(tmp_path / "lake"))
    lake.put_if_absent("a/b.json", b"1")
    lake.put_if_absent("a/b.json", b"2")
    lake.put("a/c.parquet", b"3")
    assert sorted(p.name for p in (tmp_path / "lake" / "a").iterdir()) == ["b.json", "c.parquet"]


@pytest.mark.parametrize(
    "url, message",
    [
        ("ftp://host/x", "must start with s3:// or file://"),
        ("s3:///prefix", "has no bucket"),
        ("file://otherhost/x", "file:///absolute/path"),
        # a fresh-user trial: "with space#x" wrote to "with space", silently
        ("file:///tmp/with space#x", "has a '#'"),
        ("file:relative/a?b", "has a '?'"),
        ("s3://bucket/pre#fix", "has a '#'"),
    ],
)
def test_bad_lake_urls_are_config_errors(url, message):
    with pytest.raises(ConfigError, match=message):
        parse_lake_url(url, where="job 'j'")


def test_missing_bucket_is_a_config_error(s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    with pytest.raises(ConfigError, match="bucket 'no-such-bucket-here' does not exist"):
        open_lake("s3://no-such-bucket-here/x").check()


def test_checking_a_file_lake_creates_nothing(tmp_path):
    """Fresh-user trial of issue 18: checking (and so verifying, pulling from or running
    against) a mistyped file:// lake left an empty folder at the wrong path. The check
    creates nothing; the first write creates the folder; a path that cannot be created is
    a one-line configuration error."""
    from deltaferry.errors import ConfigError

    typo = tmp_path / "lakee" / "deep"
    lake = open_lake(f"file://{typo}")
    lake.check()
    assert not (tmp_path / "lakee").exists()
    assert lake.list("j/t/manifests/") == []
    assert not (tmp_path / "lakee").exists()
    lake.put("j/t/x.json", b"{}")
    assert lake.get("j/t/x.json") == b"{}"
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is not writable"):
        open_lake(f"file://{tmp_path / 'file' / 'lake'}").check()
