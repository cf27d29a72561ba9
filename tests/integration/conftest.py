"""Fixtures for the Docker integration tests: a live engine and the workload image."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from tools.runtimes.images import DEFAULT_BASE_IMAGE, build_base_image, build_workload_image

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE = "mec-workloads:0.1"


@pytest.fixture(scope="session")
def engine() -> Iterator[docker.DockerClient]:
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as exc:
        pytest.skip(
            f"no Docker engine answers ({exc}); start one with "
            "`dockerd --bridge=none --iptables=false --host=unix:///var/run/docker.sock &`"
        )
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def workload_image(engine: docker.DockerClient) -> str:
    """The workload image, built from the working tree (the base only when missing)."""
    try:
        engine.images.get(DEFAULT_BASE_IMAGE)
    except docker.errors.ImageNotFound:
        if shutil.which("debootstrap") is None or os.geteuid() != 0:
            pytest.skip(f"{DEFAULT_BASE_IMAGE} is missing and building it needs root and debootstrap")
    cache_dir = Path(os.environ.get("MEC_TEST_CACHE", "/var/cache/mec-tests"))
    base = build_base_image(DEFAULT_BASE_IMAGE, cache_dir)
    build_workload_image(IMAGE, base.name, REPO_ROOT)
    return IMAGE
