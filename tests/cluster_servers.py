"""A real Redis Cluster for the tests: three masters and three replicas.

Started once per test session from the ``redis-server`` and ``redis-cli`` installed on this
machine (cluster mode, free ports, data in a temporary directory, no persistence), made a
cluster with ``redis-cli --cluster create ... --cluster-replicas 1``, and stopped at the
end: ``LocalCluster`` of benchmarks/private_servers.py, which the benchmarks share.
``CLARION_TEST_REDIS_CLUSTER_URL`` (``redis+cluster://host:port,...``) uses an existing
cluster instead (the failover tests, which stop nodes, then skip). A missing binary skips
the tests that need it, except under ``CI=true``, where it fails them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.cluster import ClusterNode, RedisCluster

from clarion.broker.redis_client import cluster_nodes
from private_servers import LocalCluster
from servers import _missing


@pytest.fixture(scope="session")
def redis_cluster_server() -> Iterator[LocalCluster | str]:
    """This session's Redis Cluster: ``CLARION_TEST_REDIS_CLUSTER_URL`` (a URL), or a
    local cluster of six ``redis-server`` processes started here and stopped at the end."""
    env_url = os.environ.get("CLARION_TEST_REDIS_CLUSTER_URL")
    if env_url:
        yield env_url
        return
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        _missing(
            "redis-server and redis-cli are needed on PATH to start a Redis Cluster; set "
            "CLARION_TEST_REDIS_CLUSTER_URL to use a running one"
        )
    with tempfile.TemporaryDirectory(prefix="clarion-redis-cluster-") as tmp:
        cluster = LocalCluster(server, cli, Path(tmp))
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster_server: LocalCluster | str) -> str:
    """The URL (``redis+cluster://``) of the session's Redis Cluster, healthy (a failover
    test before may have moved its masters) and empty at the start of the test."""
    if isinstance(redis_cluster_server, str):
        first, nodes = cluster_nodes(redis_cluster_server)
        startup = [ClusterNode(host, port) for host, port in nodes]
        with RedisCluster.from_url(first, startup_nodes=startup) as client:
            client.flushall(target_nodes=RedisCluster.PRIMARIES)
        return redis_cluster_server
    redis_cluster_server.wait_healthy()
    redis_cluster_server.flush()
    return redis_cluster_server.url


@pytest.fixture
def local_cluster(redis_cluster_server: LocalCluster | str, redis_cluster_url: str) -> LocalCluster:
    """The session's cluster, for a test that stops and starts its nodes: only one started
    here (not one given by URL)."""
    if isinstance(redis_cluster_server, str):
        pytest.skip("stops cluster nodes: needs the cluster started by the tests")
    return redis_cluster_server
