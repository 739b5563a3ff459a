"""Throwaway servers started from the binaries on this machine: a Redis Cluster and NATS.

Shared by the tests (tests/cluster_servers.py, tests/servers.py wrap them in fixtures) and
the benchmarks (e2e.py ``--broker redis-cluster|nats``). Each runs on free ports with its
data in a directory the caller gives, without persistence for Redis, and is stopped by
its owner.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

STARTUP_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- Redis Cluster -------------------------------------------------------------------------

MASTERS = 3
# How long a master may be silent before the others count it failed and its replica takes
# over (redis.conf's default is 15 s): by default short, so that a failover test is over in
# seconds.
NODE_TIMEOUT_MS = 2000


@dataclass
class Node:
    port: int
    bus_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=1)


@dataclass
class LocalCluster:
    """Six ``redis-server`` processes in cluster mode, and what a test may do to them.

    ``node_timeout_ms``: how long a master may be silent before the others count it failed;
    short for the failover tests, redis.conf's 15 s for a benchmark that loads the machine.
    """

    server: str
    cli: str
    root: Path
    nodes: list[Node] = field(default_factory=list)
    node_timeout_ms: int = NODE_TIMEOUT_MS

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(n.address for n in self.nodes[:MASTERS])

    def start(self) -> None:
        taken: set[int] = set()
        for i in range(2 * MASTERS):
            directory = self.root / f"node-{i}"
            directory.mkdir()
            node = Node(_unused_port(taken), _unused_port(taken), directory)
            self.nodes.append(node)
            for attempt in range(3):
                self.start_node(node)
                try:
                    _wait_for_ping(node)
                    break
                except RuntimeError:
                    # A free port taken by another server meanwhile: others, once more.
                    if attempt == 2:
                        raise
                    node.port, node.bus_port = _unused_port(taken), _unused_port(taken)
        create = [self.cli, "--cluster", "create", *(n.address for n in self.nodes)]
        subprocess.run(
            [*create, "--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=STARTUP_TIMEOUT,
        )
        self.wait_healthy()

    def start_node(self, node: Node) -> None:
        args = [self.server, "--port", str(node.port), "--bind", "127.0.0.1"]
        args += ["--cluster-enabled", "yes", "--cluster-port", str(node.bus_port)]
        args += ["--cluster-config-file", str(node.directory / "nodes.conf")]
        args += ["--cluster-node-timeout", str(self.node_timeout_ms)]
        # A replica takes over however long it has been apart from its master.
        args += ["--cluster-replica-validity-factor", "0"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(node.directory)]
        args += ["--logfile", str(node.directory / "redis.log")]
        node.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill(self, node: Node) -> None:
        """kill -9: the node stops answering at once, as on a crash."""
        assert node.process is not None
        node.process.kill()
        node.process.wait()
        node.process = None

    def restart(self, node: Node) -> None:
        """Start a killed node again: it comes back empty (no persistence) and, its slots
        taken over meanwhile, joins as a replica of the node that took them."""
        self.start_node(node)
        _wait_for_ping(node)

    def running(self) -> list[Node]:
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    def roles(self) -> dict[int, tuple[str, int | None]]:
        """Per port of a running node: ``master`` or ``replica``, and a replica's master."""
        found: dict[int, tuple[str, int | None]] = {}
        for node in self.running():
            with node.client() as client:
                info = client.info("replication")
            if info["role"] == "master":
                found[node.port] = ("master", None)
            else:
                found[node.port] = ("replica", int(info["master_port"]))
        return found

    def masters(self) -> list[Node]:
        roles = self.roles()
        return [n for n in self.running() if roles[n.port][0] == "master"]

    def replica_of(self, master: Node) -> Node:
        roles = self.roles()
        return next(n for n in self.running() if roles[n.port] == ("replica", master.port))

    def master_of(self, key: str) -> Node:
        """The master that serves ``key``'s slot."""
        with self.running()[0].client() as client:
            slot = client.cluster("keyslot", key)
            for start, end, master, *_ in client.cluster("slots"):
                if start <= slot <= end:
                    return self.node(int(master[1]))
        raise AssertionError(f"no node serves {key}")

    def node(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)

    def wait_for_master(self, replica: Node, timeout: float = 60.0) -> None:
        """Until ``replica`` has taken over as a master and says the cluster is ok (the
        others count its master failed after the node timeout, then elect it)."""
        deadline = time.monotonic() + timeout
        while self.roles().get(replica.port, ("", None))[0] != "master" or not _ok(replica):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{replica.address} did not take over")
            time.sleep(0.05)

    def wait_healthy(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Until every node runs and says the cluster is ok, with three masters, each with
        a replica in sync (polling a server's state, bounded)."""
        deadline = time.monotonic() + timeout
        while True:
            problem = self._problem()
            if problem is None:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Redis Cluster is not healthy: {problem}")
            time.sleep(0.05)

    def _problem(self) -> str | None:
        if len(self.running()) != len(self.nodes):
            return "a node is not running"
        try:
            for node in self.nodes:
                with node.client() as client:
                    if client.cluster("info")["cluster_state"] != "ok":
                        return f"{node.address} says the cluster is not ok"
                    info = client.info("replication")
                    if info["role"] != "master" and info.get("master_link_status") != "up":
                        return f"replica {node.address} is not in sync"
            roles = self.roles()
        except redis.RedisError as exc:
            return repr(exc)
        masters = [p for p, (role, _) in roles.items() if role == "master"]
        followed = {m for role, m in roles.values() if role == "replica"}
        if len(masters) != MASTERS or followed != set(masters):
            return f"roles are {roles}"
        return None

    def flush(self) -> None:
        for node in self.masters():
            with node.client() as client:
                client.flushall()

    def stop(self) -> None:
        for node in self.running():
            assert node.process is not None
            node.process.terminate()
        for node in self.nodes:
            if node.process is None:
                continue
            try:
                node.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()
            node.process = None


def _ok(node: Node) -> bool:
    with node.client() as client:
        return bool(client.cluster("info")["cluster_state"] == "ok")


def _unused_port(taken: set[int]) -> int:
    while (port := free_port()) in taken:
        pass
    taken.add(port)
    return port


def _wait_for_ping(node: Node) -> None:
    with redis.Redis(port=node.port, socket_connect_timeout=0.5, socket_timeout=0.5) as client:
        wait_for_ping(client, node.process, node.directory / "redis.log")


def wait_for_ping(
    client: redis.Redis, process: subprocess.Popen[bytes] | None, log: Path | None = None
) -> None:
    """Poll until a fresh ``redis-server`` answers PING (server start-up, bounded); its
    ``log``'s end goes into the error if it exits meanwhile."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if process is not None and process.poll() is not None:
            end = log.read_text(errors="replace")[-2000:] if log is not None else ""
            raise RuntimeError(f"redis-server exited with code {process.returncode} {end}")
        try:
            client.ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.01)


# -- NATS ----------------------------------------------------------------------------------


def nats_binary() -> str | None:
    """``nats-server`` from PATH, else where Debian's package puts it."""
    found = shutil.which("nats-server")
    if found is None and Path("/usr/sbin/nats-server").exists():
        found = "/usr/sbin/nats-server"
    return found


def wait_for_port(port: int, process: subprocess.Popen[bytes], name: str) -> None:
    """Poll until the fresh server accepts connections (server start-up, bounded)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.01)


def start_nats(
    binary: str, port: int, store: str, monitor_port: int | None = None
) -> subprocess.Popen[bytes]:
    """A ``nats-server -js`` on ``port`` keeping its JetStream store in ``store``, accepting
    connections; with ``monitor_port``, its monitoring endpoint (``/varz``, ``/jsz``) there."""
    args = [binary, "-js", "-sd", store, "-a", "127.0.0.1", "-p", str(port)]
    if monitor_port is not None:
        args += ["-m", str(monitor_port)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process, "nats-server")
    except BaseException:
        stop_process(process)
        raise
    return process


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; nothing if it has exited."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
