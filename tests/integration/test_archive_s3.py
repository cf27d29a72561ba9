"""The archive to S3 against a real S3-compatible server on loopback: moto in server mode as a child
process (stopped by pid), reached over HTTP by boto3 with fake credentials; objects listed and read
back from the server after an archive round."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from api.launcher import ChildProcess, http_ready
from monitoring.archive import Archiver, S3ArchiveStore
from swarm.commands import Note
from swarm.state import SwarmState
from tools.metrics_monitor import RequestLog
from tools.runtimes.base import free_port

pytestmark = pytest.mark.integration

BUCKET = "mec-archive-test"


@pytest.fixture
def s3_server(tmp_path: Path) -> Iterator[str]:
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        pytest.skip("moto[server] is not installed (pip install -e '.[test]')")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    server = ChildProcess(args, name="moto_server", log=tmp_path / "moto.log").start()
    try:
        server.wait_ready(lambda: http_ready(f"{url}/moto-api/"), timeout_s=60)
        yield url
    finally:
        server.stop()


def fake_session() -> boto3.Session:
    return boto3.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )


async def test_an_archive_round_puts_one_object_per_kind_that_reads_back_from_the_server(
    s3_server: str,
) -> None:
    s3 = fake_session().client("s3", endpoint_url=s3_server, config=Config(retries={"total_max_attempts": 1}))
    s3.create_bucket(Bucket=BUCKET)
    state, requests = SwarmState(), RequestLog()
    store = S3ArchiveStore(BUCKET, "edge/site-1", endpoint_url=s3_server, session=fake_session())
    archiver = Archiver(store, "site-1", decisions=state.history, request_totals=lambda: requests.totals)
    state.apply(1, Note("scaled sensor to 2"))
    requests.record("sensor", "local", 200, 3.0)

    await archiver.run_once()

    assert archiver.report()["written"] == 2 and archiver.backlog == 0
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="edge/site-1/")
    keys = sorted(item["Key"] for item in listed.get("Contents", []))
    assert [key.split("/")[2] for key in keys] == ["decisions", "metrics"]
    assert all(key.endswith(".jsonl") and "/site-1-" in key for key in keys)
    decisions = s3.get_object(Bucket=BUCKET, Key=keys[0])["Body"].read().decode().splitlines()
    assert [json.loads(line)["command"]["text"] for line in decisions] == ["scaled sensor to 2"]
    [rollup] = s3.get_object(Bucket=BUCKET, Key=keys[1])["Body"].read().decode().splitlines()
    assert json.loads(rollup)["services"]["sensor"]["requests"] == 1


async def test_a_missing_bucket_keeps_the_round_for_the_next_one(s3_server: str) -> None:
    s3 = fake_session().client("s3", endpoint_url=s3_server)
    store = S3ArchiveStore(BUCKET, endpoint_url=s3_server, session=fake_session())
    archiver = Archiver(store, "site-1")

    await archiver.run_once()  # the bucket does not exist yet: logged and kept, never raised
    assert (archiver.failures, archiver.backlog) == (1, 1)

    s3.create_bucket(Bucket=BUCKET)
    await archiver.run_once()
    assert archiver.backlog == 0
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert len(keys) == 2 and all(key.startswith("mec-archive/metrics/") for key in keys)
