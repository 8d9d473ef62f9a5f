"""Fixtures shared by every test layer. See tests/support/services.py for the service rules."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.support.services import (
    REDIS_URL,
    MotoServer,
    create_database,
    drop_database,
    drop_prefix,
    redis_client,
)

# Credentials for boto3 against moto; set before any client is created. Real deployments use
# their own AWS configuration.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Triton kernels run on the CPU through the interpreter; it must be set before they are defined.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    url = create_database()
    yield url
    drop_database(url)


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    client = redis_client()
    prefix = f"bemqtest-{uuid.uuid4().hex[:10]}:"
    yield prefix
    drop_prefix(client, prefix)


@pytest.fixture
def s3_url(moto: MotoServer) -> str:
    from ops.blobs.s3 import S3Blobs

    bucket = f"bemq-{uuid.uuid4().hex[:10]}"
    S3Blobs(bucket, endpoint_url=moto.url).ensure_bucket()
    return f"s3://{bucket}/data"


def embedded_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEMQ_")}
    env.update(BEMQ_HOME=str(home), BEMQ_POLL_INTERVAL="0.1", PYTHONPATH=str(Path.cwd()))
    return env


def production_env(home: Path, redis_prefix: str, postgres_url: str, s3_url: str,
                   s3_endpoint: str) -> dict[str, str]:
    env = embedded_env(home)
    env.update(BEMQ_BROKER_URL=REDIS_URL, BEMQ_REDIS_PREFIX=redis_prefix,
               BEMQ_DATABASE_URL=postgres_url, BEMQ_BLOB_URL=s3_url,
               BEMQ_S3_ENDPOINT_URL=s3_endpoint)
    return env


@pytest.fixture(params=["embedded", "production"])
def deployment_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """Worker/client environment for both columns of DESIGN.md's 'two ways to run'."""
    if request.param == "embedded":
        return embedded_env(tmp_path / "var")
    prefix = request.getfixturevalue("redis_prefix")
    pg = request.getfixturevalue("postgres_url")
    s3 = request.getfixturevalue("s3_url")
    moto = request.getfixturevalue("moto")
    return production_env(tmp_path / "var", prefix, pg, s3, moto.url)
