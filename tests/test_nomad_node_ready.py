"""nomad-node-ready (blueprints/rungs/nomad/node_ready.py) against a fake Nomad HTTPS API.

The script runs as shipped (node_ready_source(): one file, node_kit inlined), as a subprocess,
as on a node; everything it touches lives in tmp_path: the files it installs, the management
token, and a fake systemctl that logs its arguments and answers is-active from a state file.
The fake Nomad agents are threaded HTTPS servers on 127.0.0.1 whose certificate comes from a
throwaway CA; their answers depend on how often they were asked, so the script's waiting is
exercised. NODE_READY_PYTHON runs the script with another interpreter (it must work on the
servers' Python 3.8).
"""

from __future__ import annotations

import base64
import http.server
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from throwaway_pki import cert_pem, key_pem, make_cert, new_key

from blueprints.rungs.nomad.bootstrap import node_ready_source

PYTHON = os.environ.get("NODE_READY_PYTHON", sys.executable)
TOKEN = "0b5e55e1-7ac0-4e6d-9b1c-5e3a7d0c0001"
# 32 bytes in base64, as the stack generates the gossip key.
GOSSIP = base64.b64encode(bytes(range(100, 132))).decode()
LEADER = "10.0.1.11:4647"
# Planted in every refused stdin: it must never come back in the output.
MARKER = "S3CRET-MARKER-d41d8cd98f00"
NO_CLUSTER = (
    "the Nomad agent is up; no cluster has formed yet (a new cluster's first nodes wait for the "
    "others)"
)
ADMIN_KEYS = (
    "# deploy keys\n"
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests alice@example.com\n"
    "\n"
    "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYFakeKey bob@example.com\n"
)


# -- a throwaway PKI ------------------------------------------------------------------------------


class Pki:
    """A CA, the fake agents' certificate (127.0.0.1) and two certificates for node stdin."""

    def __init__(self, directory: Path):
        ca_key = new_key()
        ca = make_cert("CN=test Nomad CA", ca_key, None, None, ca=True)
        self.ca = cert_pem(ca)
        sans = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        server_key = new_key()
        server = make_cert("CN=server.global.nomad", server_key, ca, ca_key, ca=False, sans=sans)
        self.server_cert = directory / "server.pem"
        self.server_key = directory / "server-key.pem"
        self.server_cert.write_text(cert_pem(server))
        self.server_key.write_text(key_pem(server_key))
        self.nodes = []
        for n in (1, 2):
            key = new_key()
            cert = make_cert(f"CN=node-{n}.global.nomad", key, ca, ca_key, ca=False, sans=sans)
            self.nodes.append((cert_pem(cert), key_pem(key)))

    def secrets(self, node: int = 0, admin_keys: str = ADMIN_KEYS) -> dict[str, str]:
        cert, key = self.nodes[node]
        return {
            "admin_keys": admin_keys,
            "ca": self.ca,
            "cert": cert,
            "gossip_key": GOSSIP,
            "key": key,
            "token": TOKEN,
        }


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> Path:
    """The script exactly as Pulumi sends it to a node."""
    path = tmp_path_factory.mktemp("shipped") / "nomad-node-ready"
    path.write_text(node_ready_source(), encoding="utf-8")
    return path


# -- fake Nomad agents ----------------------------------------------------------------------------

# A route answers the n-th request (from 1) to its path, given the request's headers.
Route = Callable[[int, dict], tuple[int, object]]


class FakeNomad:
    """One Nomad agent's HTTP API: routes by path, counting requests and keeping their headers."""

    def __init__(self, pki: Pki, routes: dict[str, Route]):
        self.routes = routes
        self.hits: Counter[str] = Counter()
        self.requests: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                path = self.path.split("?")[0]
                headers = dict(self.headers.items())
                with fake.lock:
                    fake.hits[path] += 1
                    n = fake.hits[path]
                    fake.requests.append((path, headers))
                route = fake.routes.get(path)
                status, body = route(n, headers) if route else (404, "no such path")
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format, *args):
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki.server_cert, pki.server_key)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None
        # The handshake happens in the request's thread, not in the accepting one.
        self.server.socket = context.wrap_socket(
            self.server.socket, server_side=True, do_handshake_on_connect=False
        )
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def headers_of(self, path: str) -> list[dict]:
        with self.lock:
            return [h for p, h in self.requests if p == path]


@pytest.fixture
def nomad(pki, request) -> Callable[..., FakeNomad]:
    """Starts fake agents; each is stopped when the test ends."""

    def start(**routes: Route) -> FakeNomad:
        paths = {"/v1/" + name.replace("__", "/"): route for name, route in routes.items()}
        fake = FakeNomad(pki, paths)
        request.addfinalizer(fake.stop)
        return fake

    return start


def closed_port_url() -> str:
    """The URL of a port nothing listens on (a peer that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"https://127.0.0.1:{port}"


def leader(value: str = LEADER, *, none_for: int = 0) -> Route:
    """/v1/status/leader: no leader for the first none_for requests, then value."""
    return lambda n, h: (200, "" if n <= none_for else value)


def acl_self(*, forbidden_for: int = 0) -> Route:
    """/v1/acl/token/self: 403 until ACLs are bootstrapped, and for any other token."""

    def route(n, headers):
        if n <= forbidden_for or headers.get("X-Nomad-Token") != TOKEN:
            return 403, b"ACL token not found"
        return 200, {"AccessorID": "a1", "Type": "management"}

    return route


def autopilot(*, healthy: Callable[[int], set[int]] | None = None, servers: int = 3) -> Route:
    """/v1/operator/autopilot/health: healthy(n) are the healthy voters (all by default)."""

    def route(n, headers):
        if headers.get("X-Nomad-Token") != TOKEN:
            return 403, b"Permission denied"
        good = healthy(n) if healthy else set(range(1, servers + 1))
        listed = [
            {"Name": f"node-{i}.global", "Healthy": i in good, "Voter": i in good}
            for i in range(1, servers + 1)
        ]
        # Three healthy voters tolerate losing one; fewer tolerate nothing.
        tolerance = 1 if len(good) == servers else 0
        return 200, {
            "Healthy": len(good) == servers,
            "FailureTolerance": tolerance,
            "Servers": listed,
        }

    return route


def ready_node(name: str) -> dict:
    return {"Name": name, "Status": "ready", "SchedulingEligibility": "eligible"}


def nodes(listing: Callable[[int], list[dict]] | None = None) -> Route:
    """/v1/nodes: listing(n), by default node-1..3 ready and eligible."""

    def route(n, headers):
        if headers.get("X-Nomad-Token") != TOKEN:
            return 403, b"Permission denied"
        return 200, listing(n) if listing else [ready_node(f"node-{i}") for i in (1, 2, 3)]

    return route


def job(name: str, **counts: int) -> dict:
    """A /v1/jobs entry whose one group has these counts (Running, Queued, Starting...)."""
    return {"ID": name, "Status": "running", "JobSummary": {"Summary": {"g": counts}}}


def jobs(listing: Callable[[int], list[dict]] | None = None) -> Route:
    """/v1/jobs: listing(n), by default two jobs with every allocation running."""

    def route(n, headers):
        if headers.get("X-Nomad-Token") != TOKEN:
            return 403, b"Permission denied"
        if listing:
            return 200, listing(n)
        return 200, [job("shop-web", Running=2), job("shop-postgres", Running=1)]

    return route


def raft_peers(count: int = 3) -> Route:
    """/v1/status/peers: the raft configuration's servers (none before a cluster forms)."""
    return lambda n, h: (200, [f"10.0.1.{10 + i}:4647" for i in range(count)])


def ready_line(name: str) -> str:
    return (
        f"{name}: ready: a healthy voting server and an eligible client; the cluster is healthy "
        f"with 3 voting servers and 3 eligible clients, every job placed (leader {LEADER})"
    )


def healthy_agent(nomad, **overrides: Route) -> FakeNomad:
    """An agent of a formed, healthy three-node cluster."""
    routes = {
        "status__leader": leader(),
        "status__peers": raft_peers(),
        "acl__token__self": acl_self(),
        "operator__autopilot__health": autopilot(),
        "nodes": nodes(),
        "jobs": jobs(),
    }
    routes.update(overrides)
    return nomad(**routes)


# -- the node -------------------------------------------------------------------------------------

FAKE_SYSTEMCTL = """\
import json, pathlib, sys
here = pathlib.Path(__file__).parent
args = sys.argv[1:]
with open(here / "systemctl.log", "a") as log:
    log.write(json.dumps(args) + "\\n")
if (here / ("systemctl-fail-" + args[0])).exists():
    print("Job for nomad.service failed because the control process exited with error code.")
    sys.exit(1)
state = here / "unit-state"
if args[0] == "is-active":
    sys.exit(0 if state.exists() and state.read_text() == "active" else 3)
if args[0] == "start":
    state.write_text("active")
"""


class Node:
    """A node's file system in tmp_path, its configuration and a way to run the script."""

    def __init__(self, root: Path, script: Path):
        self.root = root
        self.script = script
        self.files = {
            "admin_keys_file": root / "etc/blueprints/admin-keys/deploy",
            "ca_file": root / "etc/nomad.d/tls/ca.pem",
            "cert_file": root / "etc/nomad.d/tls/node.pem",
            "key_file": root / "etc/nomad.d/tls/node-key.pem",
            "gossip_file": root / "etc/nomad.d/gossip.hcl",
            "token_file": root / "etc/blueprints/nomad/bootstrap-token",
        }
        self.systemctl = root / "systemctl.py"
        self.systemctl.write_text(FAKE_SYSTEMCTL)
        self.log = root / "systemctl.log"
        self.config_file = root / "node.json"

    def configure(self, local: str, peers: list[str], **overrides) -> Path:
        config = {
            "name": "node-1",
            "region": "global",
            "local": local,
            "peers": peers,
            "servers": 3,
            **{key: str(path) for key, path in self.files.items()},
            "unit": "nomad.service",
            "systemctl": [sys.executable, str(self.systemctl)],
            "timeout_seconds": 10,
            "poll_seconds": 0.05,
            "progress_seconds": 0.2,
        }
        config.update(overrides)
        self.config_file.write_text(json.dumps(config))
        return self.config_file

    def unit_active(self, active: bool = True):
        (self.root / "unit-state").write_text("active" if active else "inactive")

    def fail_systemctl(self, verb: str):
        (self.root / f"systemctl-fail-{verb}").write_text("")

    def run(self, secrets, *args: str, config: Path | None = None):
        data = secrets if isinstance(secrets, bytes) else json.dumps(secrets).encode()
        self.log.unlink(missing_ok=True)
        return subprocess.run(
            [PYTHON, str(self.script), "--config", str(config or self.config_file), *args],
            input=data,
            capture_output=True,
            timeout=60,
            check=False,
        )

    def systemctl_calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def node(tmp_path, script) -> Node:
    return Node(tmp_path, script)


def out_lines(result) -> list[str]:
    return result.stdout.decode().splitlines()


def err_lines(result) -> list[str]:
    return result.stderr.decode().splitlines()


def assert_no_secret(result, secrets: dict[str, str]):
    output = result.stdout.decode() + result.stderr.decode()
    assert "Traceback" not in output
    assert TOKEN not in output and GOSSIP not in output
    key_body = [line for line in secrets["key"].splitlines() if not line.startswith("-----")]
    for line in key_body:
        assert line not in output


IS_ACTIVE = ["is-active", "--quiet", "nomad.service"]


# -- a new cluster's first node -------------------------------------------------------------------


def test_first_node_of_a_new_cluster_installs_starts_and_returns(node, nomad, pki):
    # The agent answers only from its fourth request on: it is starting.
    agent = nomad(status__leader=lambda n, h: (500, b"starting") if n <= 3 else (200, ""))
    other = nomad(status__leader=leader(""))
    node.configure(agent.url, [agent.url, other.url, closed_port_url()])
    secrets = pki.secrets()

    result = node.run(secrets)

    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    lines = out_lines(result)
    # the certificate last: the unit starts only once it exists, and by then all else is there
    assert lines[:6] == [
        "node-1: admin keys written",
        "node-1: CA certificate written",
        "node-1: TLS key written",
        "node-1: gossip key written",
        "node-1: management token written",
        "node-1: TLS certificate written",
    ]
    assert "node-1: started nomad.service (it was not running)" in lines
    assert lines[-1] == f"node-1: {NO_CLUSTER}"
    assert_no_secret(result, secrets)

    expected = {
        "admin_keys_file": (secrets["admin_keys"], 0o644),
        "ca_file": (secrets["ca"], 0o644),
        "cert_file": (secrets["cert"], 0o644),
        "key_file": (secrets["key"], 0o600),
        "token_file": (TOKEN + "\n", 0o600),
    }
    gossip = node.files["gossip_file"]
    assert f'  encrypt = "{GOSSIP}"\n' in gossip.read_text()
    assert gossip.stat().st_mode & 0o7777 == 0o600
    for key, (content, mode) in expected.items():
        path = node.files[key]
        assert path.read_text() == content, key
        assert path.stat().st_mode & 0o7777 == mode, key
    for directory in (
        "etc",
        "etc/nomad.d",
        "etc/nomad.d/tls",
        "etc/blueprints/admin-keys",
        "etc/blueprints/nomad",
    ):
        assert (node.root / directory).stat().st_mode & 0o7777 == 0o755, directory
    assert [p.name for p in node.files["ca_file"].parent.iterdir() if p.name.startswith(".")] == []

    assert node.systemctl_calls() == [IS_ACTIVE, ["start", "nomad.service"]]
    assert agent.hits["/v1/status/leader"] >= 4
    assert other.hits["/v1/status/leader"] == 1
    # No token is sent before there is a cluster.
    assert all("X-Nomad-Token" not in h for _, h in agent.requests + other.requests)


# -- joining a formed cluster ---------------------------------------------------------------------


def test_replaced_node_waits_for_acl_voter_and_client(node, nomad, pki):
    def listing(n):
        fresh = {**ready_node("node-2"), "Status": "ready" if n > 2 else "initializing"}
        old = {"Name": "node-2", "Status": "down", "SchedulingEligibility": "ineligible"}
        return [ready_node("node-1"), old, fresh, ready_node("node-3")]

    agent = healthy_agent(
        nomad,
        acl__token__self=acl_self(forbidden_for=3),
        operator__autopilot__health=autopilot(healthy=lambda n: {1, 3} if n <= 4 else {1, 2, 3}),
        nodes=nodes(listing),
    )
    node.configure(agent.url, [closed_port_url(), agent.url], name="node-2", progress_seconds=0.05)
    node.unit_active()
    secrets = pki.secrets(1)

    result = node.run(secrets)

    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    lines = out_lines(result)
    assert lines[-1] == ready_line("node-2")
    progress = [line for line in lines if line.startswith("node-2: still waiting for ")]
    assert any("the management token to be accepted" in line for line in progress), lines
    assert any("HTTP 403: ACL token not found" in line for line in progress), lines
    assert any(
        "this server (node-2.global) to be a healthy voter in autopilot; last answer: "
        "node-2.global: Healthy=False, Voter=False" in line
        for line in progress
    ), lines
    assert_no_secret(result, secrets)

    # The files are new and the unit was running: it reloads them.
    assert node.systemctl_calls() == [IS_ACTIVE, ["reload", "nomad.service"]]
    assert agent.hits["/v1/acl/token/self"] >= 4
    assert agent.hits["/v1/operator/autopilot/health"] >= 5
    assert agent.hits["/v1/nodes"] >= 3
    for path in ("/v1/acl/token/self", "/v1/operator/autopilot/health", "/v1/nodes"):
        assert agent.headers_of(path), path
        assert all(h.get("X-Nomad-Token") == TOKEN for h in agent.headers_of(path)), path


def test_a_dead_node_of_the_same_name_does_not_count(node, nomad, pki):
    old = {"Name": "node-2", "Status": "down", "SchedulingEligibility": "ineligible"}
    agent = healthy_agent(nomad, nodes=nodes(lambda n: [ready_node("node-1"), old]))
    node.configure(agent.url, [agent.url], name="node-2", timeout_seconds=0.5)
    node.unit_active()

    result = node.run(pki.secrets())

    assert result.returncode == 1
    assert err_lines(result) == [
        "node-2: not ready after 0.5 s: waiting for this node (node-2) to be a ready, eligible "
        "client; last answer: node-2: Status=down, SchedulingEligibility=ineligible"
    ]
    assert agent.hits["/v1/nodes"] > 3
    assert_no_secret(result, pki.secrets())


def test_garbage_from_the_api_is_an_answer_not_a_crash(node, nomad, pki):
    agent = healthy_agent(
        nomad, operator__autopilot__health=lambda n, h: (200, b"<html>proxy error</html>")
    )
    node.configure(agent.url, [agent.url], timeout_seconds=0.5)
    node.unit_active()

    result = node.run(pki.secrets())

    assert result.returncode == 1
    assert err_lines(result) == [
        "node-1: not ready after 0.5 s: waiting for this server (node-1.global) to be a healthy "
        "voter in autopilot; last answer: HTTP 200 with a body that is not JSON: "
        "<html>proxy error</html>"
    ]


def test_an_untrusted_agent_certificate_is_reported(node, nomad, pki):
    agent = healthy_agent(nomad)
    other_ca = Pki(node.root).ca
    node.configure(agent.url, [agent.url], timeout_seconds=0.3)
    node.unit_active()

    result = node.run({**pki.secrets(), "ca": other_ca})

    assert result.returncode == 1
    [line] = err_lines(result)
    assert line.startswith(
        "node-1: not ready after 0.3 s: waiting for the local Nomad agent's HTTP API to answer; "
        f"last answer: TLS error from {agent.url}: "
    )
    assert "CERTIFICATE_VERIFY_FAILED" in line


# -- what changes on the node ---------------------------------------------------------------------


def test_reload_only_when_tls_files_change(node, nomad, pki):
    agent = healthy_agent(nomad)
    node.configure(agent.url, [agent.url])
    node.unit_active()

    first = node.run(pki.secrets())
    assert first.returncode == 0, first.stderr
    assert node.systemctl_calls() == [IS_ACTIVE, ["reload", "nomad.service"]]

    inodes = {key: path.stat().st_ino for key, path in node.files.items()}
    same = node.run(pki.secrets())
    assert same.returncode == 0, same.stderr
    assert out_lines(same)[:7] == [
        "node-1: admin keys unchanged",
        "node-1: CA certificate unchanged",
        "node-1: TLS key unchanged",
        "node-1: gossip key unchanged",
        "node-1: management token unchanged",
        "node-1: TLS certificate unchanged",
        "node-1: nomad.service is running and its TLS files are unchanged",
    ]
    assert node.systemctl_calls() == [IS_ACTIVE]
    assert {key: path.stat().st_ino for key, path in node.files.items()} == inodes

    # The admin keys are no business of Nomad's; an empty list is allowed.
    keys_only = node.run(pki.secrets(admin_keys=""))
    assert keys_only.returncode == 0, keys_only.stderr
    assert "node-1: admin keys updated" in out_lines(keys_only)
    assert node.files["admin_keys_file"].read_text() == ""
    assert node.systemctl_calls() == [IS_ACTIVE]

    new_cert = node.run(pki.secrets(1, admin_keys=""))
    assert new_cert.returncode == 0, new_cert.stderr
    assert out_lines(new_cert)[:7] == [
        "node-1: admin keys unchanged",
        "node-1: CA certificate unchanged",
        "node-1: TLS key updated",
        "node-1: gossip key unchanged",
        "node-1: management token unchanged",
        "node-1: TLS certificate updated",
        "node-1: reloaded nomad.service (its TLS files changed)",
    ]
    assert node.systemctl_calls() == [IS_ACTIVE, ["reload", "nomad.service"]]
    assert node.files["cert_file"].read_text() == pki.nodes[1][0]
    assert node.files["key_file"].stat().st_mode & 0o7777 == 0o600


def test_an_inactive_unit_is_started_even_with_unchanged_files(node, nomad, pki):
    agent = healthy_agent(nomad)
    node.configure(agent.url, [agent.url])
    node.unit_active()
    assert node.run(pki.secrets()).returncode == 0
    node.unit_active(False)

    result = node.run(pki.secrets())

    assert result.returncode == 0, result.stderr
    assert node.systemctl_calls() == [IS_ACTIVE, ["start", "nomad.service"]]


def test_a_failing_systemctl_ends_the_run(node, nomad, pki):
    agent = healthy_agent(nomad)
    node.configure(agent.url, [agent.url])
    node.fail_systemctl("start")

    result = node.run(pki.secrets())

    assert result.returncode == 1
    assert err_lines(result) == [
        "node-1: systemctl start nomad.service failed with exit status 1: Job for nomad.service "
        "failed because the control process exited with error code."
    ]
    assert agent.hits["/v1/status/leader"] == 0


# -- the whole cluster ----------------------------------------------------------------------------


def test_cluster_waits_for_a_leader_and_every_server(node, nomad, pki):
    agent = healthy_agent(
        nomad,
        status__leader=leader(none_for=4),
        # a new cluster: no raft configuration until it forms
        status__peers=raft_peers(0),
        operator__autopilot__health=autopilot(
            healthy=lambda n: {1} if n <= 2 else {1, 2} if n <= 5 else {1, 2, 3}
        ),
    )
    peer = nomad(status__leader=leader(""))
    node.configure(agent.url, [agent.url, peer.url, closed_port_url()], progress_seconds=0.05)

    result = node.run(pki.secrets(), "--cluster")

    assert result.returncode == 0, result.stderr
    lines = out_lines(result)
    assert lines[-1] == ready_line("node-1")
    progress = [line for line in lines if line.startswith("node-1: still waiting for ")]
    assert any(
        line.startswith("node-1: still waiting for a cluster leader; last answer: ")
        and f"{peer.url}: no leader" in line
        and "Connection refused" in line
        for line in progress
    ), lines
    assert any(
        "a healthy cluster with 3 voting servers and 3 eligible clients; last answer: "
        "autopilot Healthy=False, FailureTolerance=0, 2 healthy voting server(s), 3 eligible "
        "client(s)" in line
        for line in progress
    ), lines
    assert agent.hits["/v1/operator/autopilot/health"] >= 6


def test_cluster_times_out_short_of_servers(node, nomad, pki):
    agent = healthy_agent(nomad, operator__autopilot__health=autopilot(healthy=lambda n: {1, 2}))
    node.configure(agent.url, [agent.url], name="node-2", timeout_seconds=0.5)
    node.unit_active()

    result = node.run(pki.secrets(), "--cluster")

    assert result.returncode == 1
    assert err_lines(result) == [
        "node-2: not ready after 0.5 s: waiting for a healthy cluster with 3 voting servers and "
        "3 eligible clients; last answer: autopilot Healthy=False, FailureTolerance=0, 2 healthy "
        "voting server(s), 3 eligible client(s)"
    ]


def test_this_node_back_is_not_enough_while_another_server_is_unhealthy(node, nomad, pki):
    """node-2 is a healthy voter again, but node-3 is not: replacing the next node now would
    lose the quorum, so node-2 is not ready (with or without --cluster)."""
    agent = healthy_agent(nomad, operator__autopilot__health=autopilot(healthy=lambda n: {1, 2}))
    node.configure(agent.url, [closed_port_url()], name="node-2", timeout_seconds=0.5)
    node.unit_active()

    result = node.run(pki.secrets())

    assert result.returncode == 1
    [line] = err_lines(result)
    assert "waiting for a healthy cluster with 3 voting servers" in line
    assert "FailureTolerance=0" in line


def test_the_work_the_node_displaced_must_run_again(node, nomad, pki):
    """The replaced data node is back and healthy; postgres, pinned to it, is still starting:
    wait until every job's allocations are placed and running."""
    agent = healthy_agent(
        nomad,
        jobs=jobs(
            lambda n: [
                job("shop-web", Running=2),
                job("shop-postgres", Starting=1) if n <= 3 else job("shop-postgres", Running=1),
                job("shop-redis", Queued=1) if n <= 2 else job("shop-redis", Running=1),
                {"ID": "old", "Status": "dead", "JobSummary": {"Summary": {"g": {"Queued": 1}}}},
            ]
        ),
    )
    node.configure(agent.url, [closed_port_url()], progress_seconds=0.05)
    node.unit_active()

    result = node.run(pki.secrets())

    assert result.returncode == 0, result.stderr
    lines = out_lines(result)
    assert lines[-1] == ready_line("node-1")
    assert any(
        "every job's allocations to be placed and running; last answer: shop-postgres/g: 0 "
        "queued, 1 starting; shop-redis/g: 1 queued, 0 starting" in line
        for line in lines
    ), lines
    assert agent.hits["/v1/jobs"] >= 4
    assert all(h.get("X-Nomad-Token") == TOKEN for h in agent.headers_of("/v1/jobs"))


def test_a_formed_cluster_without_a_leader_is_waited_for(node, nomad, pki):
    """An election (or a lost quorum) is not a new cluster: the peers list raft peers."""
    agent = nomad(status__leader=leader(""), status__peers=raft_peers(0))
    peer = nomad(status__leader=leader(""), status__peers=raft_peers(3))
    node.configure(agent.url, [peer.url], name="node-2", timeout_seconds=0.5)

    result = node.run(pki.secrets())

    assert result.returncode == 1
    [line] = err_lines(result)
    assert line.startswith(
        "node-2: not ready after 0.5 s: waiting for a cluster leader (the cluster has formed); "
        f"last answer: {peer.url} lists 3 raft peer(s) but no leader"
    )


def test_a_node_whose_peers_are_all_silent_is_not_ready_unless_it_is_the_first(node, nomad, pki):
    """A replaced node-2 that reaches no peer (its private network is not up) must not let the
    rollout go on; the first node of a new cluster has nobody to reach and is done."""
    agent = nomad(status__leader=leader(""))
    node.configure(
        agent.url, [closed_port_url(), closed_port_url()], name="node-2", timeout_seconds=1
    )
    result = node.run(pki.secrets())
    assert result.returncode == 1
    [line] = err_lines(result)
    assert line.startswith("node-2: not ready after 1 s: waiting for another server to answer")

    node.configure(agent.url, [closed_port_url(), closed_port_url()], name="node-1", first=True)
    result = node.run(pki.secrets())
    assert result.returncode == 0, result.stderr
    assert out_lines(result)[-1] == f"node-1: {NO_CLUSTER}"


def test_the_data_volume_s_mark_makes_a_new_data_node_wait_for_the_cluster(
    node, nomad, pki, tmp_path
):
    agent = nomad(status__leader=leader(""))
    marker = tmp_path / "srv/data/.blueprints/nomad-cluster-formed"
    marker.parent.mkdir(parents=True)
    marker.write_text("")
    node.configure(
        agent.url,
        [agent.url, closed_port_url()],
        first=True,
        formed_marker=str(marker),
        timeout_seconds=1,
    )
    result = node.run(pki.secrets())
    assert result.returncode == 1
    [line] = err_lines(result)
    assert line.startswith("node-1: not ready after 1 s: waiting for a cluster leader")
    # without the mark, the same answers are a new cluster's first node
    marker.unlink()
    result = node.run(pki.secrets())
    assert result.returncode == 0, result.stderr


# -- refusals -------------------------------------------------------------------------------------


def _stdin_cases(pki: Pki) -> dict[str, tuple[bytes, str]]:
    good = pki.secrets()

    def with_(**changes):
        return json.dumps({**good, **changes}).encode()

    missing = dict(good)
    del missing["key"]
    return {
        "empty": (b"", "refusing stdin: it is empty;"),
        "not utf-8": (b"\xff\xfe" + MARKER.encode(), "refusing stdin: it is not UTF-8 text;"),
        "not json": (f"{MARKER} is not JSON".encode(), "refusing stdin: it is not valid JSON;"),
        "not an object": (json.dumps([MARKER]).encode(), "it is JSON but not an object;"),
        "missing key": (json.dumps(missing).encode(), "refusing stdin: missing key(s) key;"),
        "extra key": (with_(tokens=MARKER), "refusing stdin: unexpected key(s) tokens;"),
        "odd extra key": (with_(**{MARKER + " x": "y"}), "refusing stdin: 1 unexpected key(s);"),
        "not a string": (with_(ca=[MARKER]), "refusing stdin: ca is not a string;"),
        "ca not PEM": (with_(ca=MARKER), "ca is not a PEM certificate"),
        "cert not PEM": (with_(cert=MARKER), "cert is not a PEM certificate"),
        "key not PEM": (
            with_(key="-----BEGIN CERTIFICATE-----\n" + MARKER),
            "key is not a PEM private key",
        ),
        "gossip not base64": (
            with_(gossip_key=MARKER),
            "refusing stdin: gossip_key is not 32 bytes in base64;",
        ),
        "gossip with a quote": (
            with_(gossip_key=GOSSIP[:-2] + '"='),
            "refusing stdin: gossip_key is not 32 bytes in base64;",
        ),
        "token not a UUID": (with_(token=MARKER), "refusing stdin: token is not a UUID;"),
        "bad admin key": (
            with_(admin_keys=ADMIN_KEYS + "ssh-dss " + MARKER + "\n"),
            "admin_keys line 5 is not an OpenSSH public key (it must start with one of "
            "ssh-ed25519, ssh-rsa, ecdsa-sha2-, sk-ssh-ed25519@openssh.com, sk-ecdsa-sha2-);",
        ),
    }


STDIN_CASES = [
    "empty",
    "not utf-8",
    "not json",
    "not an object",
    "missing key",
    "extra key",
    "odd extra key",
    "not a string",
    "ca not PEM",
    "cert not PEM",
    "key not PEM",
    "gossip not base64",
    "gossip with a quote",
    "token not a UUID",
    "bad admin key",
]


@pytest.mark.parametrize("case", STDIN_CASES)
def test_bad_stdin_is_refused_and_nothing_is_written(node, pki, case):
    data, expected = _stdin_cases(pki)[case]
    node.configure(closed_port_url(), [])

    result = node.run(data)

    assert result.returncode == 2
    assert result.stdout == b""
    [line] = err_lines(result)
    assert line.startswith("node-1: refusing stdin: ")
    assert expected in line
    assert line.endswith(
        "expected one JSON object with exactly the string keys admin_keys (OpenSSH public keys, "
        "one per line), ca and cert (PEM certificates), key (a PEM private key), gossip_key (32 "
        "bytes in base64) and token (a UUID)"
    )
    assert MARKER not in line
    assert_no_secret(result, pki.secrets())
    assert not (node.root / "etc").exists()
    assert node.systemctl_calls() == []


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read it (No such file or directory)"),
        ("{not json", "it is not valid JSON"),
        ("[]", "expected a JSON object"),
        ('{"name": "node-1"}', "missing region, local, peers, servers, ca_file"),
        ("peers", "peers must be a list of https:// URLs"),
        ("servers", "servers must be a positive integer"),
    ],
)
def test_bad_config_is_refused(node, pki, content, expected):
    path = node.root / "config.json"
    if content in ("peers", "servers"):
        node.configure("https://127.0.0.1:1", [])
        config = json.loads(node.config_file.read_text())
        node.config_file.write_text(json.dumps({**config, content: "three"}))
        path = node.config_file
    elif content is not None:
        path.write_text(content)

    result = node.run(pki.secrets(), config=path)

    assert result.returncode == 2
    assert result.stdout == b""
    [line] = err_lines(result)
    assert line.startswith(f"nomad-node-ready: configuration {path}: ")
    assert expected in line
    assert not (node.root / "etc").exists()


@pytest.mark.parametrize("args", [["--bogus"], ["extra"], ["--config"], ["--config="]])
def test_bad_arguments_print_usage(script, pki, args):
    result = subprocess.run(
        [PYTHON, str(script), *args],
        input=json.dumps(pki.secrets()).encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 2
    assert result.stdout == b""
    assert err_lines(result) == ["usage: nomad-node-ready [--config PATH] [--cluster]"]
