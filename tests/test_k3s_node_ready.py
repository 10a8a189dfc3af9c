"""k3s-node-ready (blueprints/rungs/k8s/node_ready.py) against a fake k3s API over HTTPS.

The script runs as shipped (node_ready_source(): one file, node_kit inlined), as a subprocess,
as on a node; everything it touches lives in tmp_path: the files it installs, the joined
marker, the TLS directory, and a fake systemctl that logs its arguments and answers is-active
from a state file. The fake k3s API servers are threaded HTTPS servers on
127.0.0.1 with a certificate from a throwaway server CA; they ask for a client certificate from
a throwaway client CA and answer 401 on /api and /readyz unless it is an admin's
(O=system:masters); /db/info (k3s's supervisor) wants basic auth as "server" with the token's
secret instead. They share one cluster state (as the API servers of one etcd do): the nodes,
their readiness depending on how often they were asked, a deleted node that lingers for a few
GETs (k3s's finalizer), the node password secrets, etcd's member list, the pods with their
evictions (a PodDisruptionBudget refusing some a few times, evicted pods that linger), and the
app's Deployments and StatefulSets. NODE_READY_PYTHON runs the script with another interpreter
(it must work on the nodes' Python 3.8).
"""

from __future__ import annotations

import base64
import http.server
import ipaddress
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from throwaway_pki import cert_pem, key_pem, make_cert, new_key

from blueprints.rungs.k8s.bootstrap import node_ready_source
from blueprints.rungs.k8s.node_ready import supervisor_password

PYTHON = os.environ.get("NODE_READY_PYTHON", sys.executable)
# k3s's secure token format: K10<sha256 of the CA, hex>::server:<secret>
TOKEN_SECRET = "0b5e55e17ac04e6d9b1c5e3a7d0c0001"
TOKEN = "K10" + "a1b2c3d4e5f6a7b8" * 4 + "::server:" + TOKEN_SECRET
S3_SECRET = "s3-secret-9f8e7d6c5b4a"
ETCD_S3 = {
    "etcd-s3": True,
    "etcd-s3-bucket": "shop-etcd-snapshots",
    "etcd-s3-access-key": "AKIAEXAMPLE",
    "etcd-s3-secret-key": S3_SECRET,
    "etcd-snapshot-retention": 5,
}
# Planted in every refused stdin: it must never come back in the output.
MARKER = "S3CRET-MARKER-d41d8cd98f00"
ADMIN_KEYS = (
    "# deploy keys\n"
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests alice@example.com\n"
    "\n"
    "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYFakeKey bob@example.com\n"
)
NODES = ["cp-1", "cp-2", "cp-3", "worker-1", "worker-2", "worker-3"]
ETCD_LABEL = "node-role.kubernetes.io/etcd"
STDIN_EXPECTED = (
    "expected one JSON object with exactly the keys admin_keys (OpenSSH public keys, one per "
    "line), token (the cluster token), ca and client_cert (PEM certificates), client_key (a PEM "
    "private key), pki (null, or relative paths under the TLS directory to PEM texts) and "
    "etcd_s3 (null, or etcd-* k3s settings to strings, numbers or booleans)"
)


# -- a throwaway PKI ------------------------------------------------------------------------------


class Pki:
    """k3s's server CA with the API servers' certificate (127.0.0.1), its client CA with an
    admin and a non-admin client certificate, and a foreign CA."""

    def __init__(self, directory: Path):
        server_ca_key = new_key()
        server_ca = make_cert("CN=k3s-server-ca", server_ca_key, None, None, ca=True)
        self.ca = cert_pem(server_ca)
        self.ca_key = key_pem(server_ca_key)
        sans = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        server_key = new_key()
        server = make_cert(
            "CN=k3s",
            server_key,
            server_ca,
            server_ca_key,
            ca=False,
            sans=sans,
            usages=[ExtendedKeyUsageOID.SERVER_AUTH],
        )
        self.server_cert = directory / "serving-kube-apiserver.crt"
        self.server_key = directory / "serving-kube-apiserver.key"
        self.server_cert.write_text(cert_pem(server))
        self.server_key.write_text(key_pem(server_key))

        client_ca_key = new_key()
        client_ca = make_cert("CN=k3s-client-ca", client_ca_key, None, None, ca=True)
        self.client_ca = cert_pem(client_ca)
        self.clients = {}
        for kind, subject in (
            ("admin", "CN=blueprints-admin,O=system:masters"),
            ("developer", "CN=dev,O=developers"),
        ):
            key = new_key()
            cert = make_cert(
                subject,
                key,
                client_ca,
                client_ca_key,
                ca=False,
                usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
            )
            self.clients[kind] = (cert_pem(cert), key_pem(key))
        self.foreign_ca = cert_pem(make_cert("CN=someone-else", new_key(), None, None, ca=True))

    def tls_files(self) -> dict[str, str]:
        """What stdin's pki holds for the first control plane (the texts are stand-ins)."""
        return {
            "server-ca.crt": self.ca,
            "server-ca.key": self.ca_key,
            "client-ca.crt": self.client_ca,
            "etcd/peer-ca.key": self.ca_key,
            "service.key": self.ca_key,
        }

    def secrets(self, *, client="admin", pki=None, etcd_s3=None, token=TOKEN, **changes):
        cert, key = self.clients[client]
        return {
            "admin_keys": ADMIN_KEYS,
            "token": token,
            "ca": self.ca,
            "client_cert": cert,
            "client_key": key,
            "pki": pki,
            "etcd_s3": etcd_s3,
            **changes,
        }


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> Path:
    """The script exactly as Pulumi sends it to a node."""
    path = tmp_path_factory.mktemp("shipped") / "k3s-node-ready"
    path.write_text(node_ready_source(), encoding="utf-8")
    return path


# -- a fake k3s cluster ---------------------------------------------------------------------------


class Cluster:
    """What the API servers of one cluster share. A node's `ready` is True, False, or n: not
    Ready the first n times it is shown. `on_start` nodes register once the unit runs."""

    def __init__(self, root: Path):
        self.root = root
        self.lock = threading.Lock()
        self.nodes: dict[str, dict] = {}
        self.pending: dict[str, dict] = {}
        # GETs of a deleted node object that still show it (k3s's etcd finalizer).
        self.delete_takes = 2
        self.secrets: set[str] = set()
        self.deleted_secrets: list[str] = []
        # etcd's member list as /db/info shows it; None: one member per etcd-labelled node
        self.members: list[dict] | None = None
        self.pods: dict[tuple[str, str], dict] = {}
        self.uids = 0
        self.namespaces: set[str] = set()
        # namespace -> plural (deployments, statefulsets) -> name -> workload spec
        self.workloads: dict[str, dict[str, dict[str, dict]]] = {}

    def pod(
        self,
        namespace,
        name,
        node,
        *,
        owner="ReplicaSet",
        phase="Running",
        mirror=False,
        blocks=0,
        linger=1,
        recreate_on=None,
    ):
        """A pod on node. An eviction is refused (429) blocks times; an evicted pod is shown as
        terminating for linger GETs (None: forever), then is gone, or (recreate_on) is back
        under a new uid on that node, as a StatefulSet's pod."""
        self.uids += 1
        self.pods[namespace, name] = {
            "uid": f"uid-{self.uids}",
            "node": node,
            "owner": owner,
            "phase": phase,
            "mirror": mirror,
            "blocks": blocks,
            "linger": linger,
            "recreate_on": recreate_on,
            "evicted": False,
        }

    def workload(self, namespace, plural, name, *, replicas=1, ready=None, updated=None, after=0):
        """A Deployment or StatefulSet; ready and updated (default: replicas) are shown once it
        has been listed after times, before that 0 ready. replicas None: no spec.replicas."""
        self.workloads.setdefault(namespace, {}).setdefault(plural, {})[name] = {
            "replicas": replicas,
            "ready": (1 if replicas is None else replicas) if ready is None else ready,
            "updated": updated,
            "after": after,
            "listed": 0,
        }

    def add(self, name, ready=True, *, etcd=None, reason="KubeletNotReady", message=""):
        self.nodes[name] = self._spec(name, ready, etcd, reason, message)

    def on_start(self, name, ready=True, *, etcd=None):
        self.pending[name] = self._spec(name, ready, etcd, "KubeletNotReady", "starting")

    def healthy(self, *, skip=()):
        for name in NODES:
            if name not in skip:
                self.add(name)
        return self

    @staticmethod
    def _spec(name, ready, etcd, reason, message):
        etcd = name.startswith("cp-") if etcd is None else etcd
        labels = {"kubernetes.io/hostname": name}
        if etcd:
            labels.update({ETCD_LABEL: "true", "node-role.kubernetes.io/control-plane": "true"})
        return {
            "ready": ready,
            "labels": labels,
            "reason": reason,
            "message": message,
            "shown": 0,
            "deleting": None,
        }

    def members_now(self) -> list[dict]:
        if self.members is not None:
            return self.members
        etcd = [n for n, spec in sorted(self.nodes.items()) if ETCD_LABEL in spec["labels"]]
        return [member(n) for n in etcd]

    def event(self, *entry):
        with open(self.root / "events.log", "a") as log:
            log.write(json.dumps(["http", *entry]) + "\n")

    def _sync(self):
        state = self.root / "unit-state"
        if state.exists() and state.read_text() == "active":
            for name in list(self.pending):
                if name not in self.nodes:
                    self.nodes[name] = self.pending.pop(name)

    def _show(self, name):
        spec = self.nodes[name]
        spec["shown"] += 1
        ready = spec["ready"]
        if not isinstance(ready, bool):
            ready = spec["shown"] > ready
        condition = {"type": "Ready", "status": "True" if ready else "False"}
        condition.update(
            {"reason": "KubeletReady", "message": "kubelet is posting ready status"}
            if ready
            else {"reason": spec["reason"], "message": spec["message"]}
        )
        metadata = {"name": name, "labels": spec["labels"]}
        if spec["deleting"] is not None:
            metadata["deletionTimestamp"] = "2025-01-01T00:00:00Z"
            metadata["finalizers"] = ["etcd.k3s.cattle.io"]
        return {"kind": "Node", "metadata": metadata, "status": {"conditions": [condition]}}

    def _show_pod(self, key):
        spec = self.pods[key]
        metadata = {"namespace": key[0], "name": key[1], "uid": spec["uid"]}
        if spec["owner"]:
            metadata["ownerReferences"] = [{"kind": spec["owner"], "name": "owner"}]
        if spec["mirror"]:
            metadata["annotations"] = {"kubernetes.io/config.mirror": "0123abcd"}
        if spec["evicted"]:
            metadata["deletionTimestamp"] = "2025-01-01T00:00:00Z"
        return {
            "kind": "Pod",
            "metadata": metadata,
            "spec": {"nodeName": spec["node"]},
            "status": {"phase": spec["phase"]},
        }

    def _pods(self, method, path, query, body):
        """The pod routes: list by node, get one, evict one."""
        if method == "GET" and path == "/api/v1/pods":
            field = query.get("fieldSelector", [""])[0]
            node = field.removeprefix("spec.nodeName=")
            items = [self._show_pod(k) for k in sorted(self.pods) if self.pods[k]["node"] == node]
            return 200, {"kind": "PodList", "items": items}
        parts = path.split("/")
        # /api/v1/namespaces/<ns>/pods/<name>[/eviction]
        key = (parts[4], parts[6])
        spec = self.pods.get(key)
        if path.endswith("/eviction") and method == "POST":
            self.event("POST", path, body)
            if spec is None:
                return 404, not_found("pods", key[1])
            if spec["blocks"] > 0:
                spec["blocks"] -= 1
                return 429, {
                    "kind": "Status",
                    "code": 429,
                    "reason": "TooManyRequests",
                    "message": "Cannot evict pod as it would violate the pod's disruption budget.",
                    "details": {
                        "causes": [
                            {
                                "reason": "DisruptionBudget",
                                "message": "The disruption budget web needs 1 healthy pods and "
                                "has 1 currently",
                            }
                        ]
                    },
                }
            spec["evicted"] = True
            return 201, {"kind": "Status", "status": "Success"}
        if method == "GET" and spec is not None:
            self.event("GET", path)
            if spec["evicted"] and spec["linger"] is not None:
                if spec["linger"] <= 0:
                    del self.pods[key]
                    if spec["recreate_on"] is not None:
                        self.pod(*key, spec["recreate_on"], owner=spec["owner"])
                        return 200, self._show_pod(key)
                    return 404, not_found("pods", key[1])
                spec["linger"] -= 1
            return 200, self._show_pod(key)
        return 404, not_found("pods", key[1])

    def _apps(self, path):
        """The app's namespace and its Deployments and StatefulSets."""
        parts = path.split("/")
        if path.startswith("/api/v1/namespaces/") and len(parts) == 5:
            if parts[4] in self.namespaces:
                return 200, {"kind": "Namespace", "metadata": {"name": parts[4]}}
            return 404, not_found("namespaces", parts[4])
        # /apis/apps/v1/namespaces/<ns>/<plural>
        namespace, plural = parts[5], parts[6]
        items = []
        for name, spec in sorted(self.workloads.get(namespace, {}).get(plural, {}).items()):
            spec["listed"] += 1
            done = spec["listed"] > spec["after"]
            status = {"replicas": spec["replicas"]}
            if done:
                status["readyReplicas"] = spec["ready"]
                status["updatedReplicas"] = (
                    spec["ready"] if spec["updated"] is None else spec["updated"]
                )
            item = {"metadata": {"name": name, "namespace": namespace}, "spec": {}}
            if spec["replicas"] is not None:
                item["spec"]["replicas"] = spec["replicas"]
            items.append({**item, "status": status})
        return 200, {"kind": plural, "items": items}

    def answer(self, method, path, query=None, body=None, content_type=None):
        with self.lock:
            self._sync()
            if path == "/api/v1/pods" or "/pods/" in path:
                return self._pods(method, path, query or {}, body)
            apps = path.startswith(("/api/v1/namespaces/", "/apis/apps/v1/"))
            if method == "GET" and apps and "/secrets/" not in path:
                return self._apps(path)
            if method == "GET" and path == "/api/v1/nodes":
                items = [self._show(n) for n in sorted(self.nodes)]
                return 200, {"kind": "NodeList", "items": items}
            prefix = "/api/v1/nodes/"
            if path.startswith(prefix):
                name = path[len(prefix) :]
                spec = self.nodes.get(name)
                if spec is None:
                    return 404, not_found("nodes", name)
                if method == "PATCH":
                    self.event("PATCH", path, body, content_type)
                    if content_type == "application/merge-patch+json":
                        spec["unschedulable"] = body["spec"]["unschedulable"]
                        return 200, self._show(name)
                    return 415, {"kind": "Status", "code": 415, "message": "unsupported"}
                if method == "DELETE":
                    self.event("DELETE", path)
                    if spec["deleting"] is None:
                        spec["deleting"] = self.delete_takes
                    return 200, self._show(name)
                if spec["deleting"] is not None:
                    if spec["deleting"] <= 0:
                        del self.nodes[name]
                        return 404, not_found("nodes", name)
                    spec["deleting"] -= 1
                return 200, self._show(name)
            prefix = "/api/v1/namespaces/kube-system/secrets/"
            if method == "DELETE" and path.startswith(prefix):
                self.event("DELETE", path)
                name = path[len(prefix) :]
                if name not in self.secrets:
                    return 404, not_found("secrets", name)
                self.secrets.discard(name)
                self.deleted_secrets.append(name)
                return 200, {"kind": "Status", "status": "Success"}
        return 404, b"404 page not found"


def member(node: str, suffix: str = "5e1f00d4", learner: bool = False) -> dict:
    """An etcd member as k3s names it: <node>-<8 hex>."""
    return {"ID": 1234, "name": f"{node}-{suffix}", "peerURLs": [], "isLearner": learner}


def not_found(kind, name):
    return {"kind": "Status", "code": 404, "reason": "NotFound", "message": f'{kind} "{name}" ...'}


# A per-server route: the n-th request (from 1) to its path -> (status, body).
Route = Callable[[int], tuple[int, object]]


SUPERVISOR_AUTH = "Basic " + base64.b64encode(f"server:{TOKEN_SECRET}".encode()).decode()


class FakeK3s:
    """One k3s API server (port 6443): /ping for anyone, /db/info for the supervisor's user
    "server" (basic auth with the token's secret), /readyz/etcd and /api for admins."""

    def __init__(
        self,
        pki: Pki,
        cluster: Cluster,
        *,
        ping: Route | None = None,
        readyz=None,
        db_info: Route | None = None,
    ):
        self.cluster = cluster
        self.ping = ping or (lambda n: (200, b"pong"))
        self.readyz = readyz or (lambda n: (200, b"ok"))
        self.db_info = db_info
        self.hits: Counter[tuple[str, str]] = Counter()
        self.clients: list[tuple[str, str | None]] = []
        self.authorizations: list[str | None] = []
        self.queries: list[str] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.handle_method("GET")

            def do_DELETE(self):
                self.handle_method("DELETE")

            def do_POST(self):
                self.handle_method("POST")

            def do_PATCH(self):
                self.handle_method("PATCH")

            def handle_method(self, method):
                path, _, query = self.path.partition("?")
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                peer = self.connection.getpeercert() or {}
                organizations = [
                    value
                    for rdn in peer.get("subject", ())
                    for key, value in rdn
                    if key == "organizationName"
                ]
                with fake.lock:
                    fake.hits[method, path] += 1
                    n = fake.hits[method, path]
                    fake.clients.append((path, ",".join(organizations) or None))
                    if query:
                        fake.queries.append(query)
                if path == "/ping" and method == "GET":
                    status, body = fake.ping(n)
                elif path == "/db/info" and method == "GET":
                    authorization = self.headers.get("Authorization")
                    with fake.lock:
                        fake.authorizations.append(authorization)
                    if fake.db_info is not None:
                        status, body = fake.db_info(n)
                    elif authorization != SUPERVISOR_AUTH:
                        status, body = 401, {"kind": "Status", "code": 401, "message": "no"}
                    else:
                        with fake.cluster.lock:
                            status, body = 200, {"members": fake.cluster.members_now()}
                elif not path.startswith(("/api", "/readyz")):
                    status, body = 404, b"404 page not found"
                elif "system:masters" not in organizations:
                    status, body = 401, {"kind": "Status", "code": 401, "message": "Unauthorized"}
                elif path == "/readyz/etcd" and method == "GET":
                    status, body = fake.readyz(n)
                else:
                    status, body = fake.cluster.answer(
                        method,
                        path,
                        urllib.parse.parse_qs(query),
                        body,
                        self.headers.get("Content-Type"),
                    )
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
        context.verify_mode = ssl.CERT_OPTIONAL
        context.load_verify_locations(cadata=pki.client_ca)
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

    def count(self, method: str, path: str) -> int:
        with self.lock:
            return self.hits[method, path]


def closed_port_url() -> str:
    """The URL of a port nothing listens on (a control plane that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"https://127.0.0.1:{port}"


# -- the node -------------------------------------------------------------------------------------

FAKE_SYSTEMCTL = """\
#!{python}
import json, pathlib, sys, time
here = pathlib.Path(__file__).parent
args = sys.argv[1:]
with open(here / "systemctl.log", "a") as log:
    log.write(json.dumps(args) + "\\n")
with open(here / "events.log", "a") as log:
    log.write(json.dumps(["systemctl"] + args) + "\\n")
verb = args[0]
if (here / ("systemctl-fail-" + verb)).exists():
    print("Job for k3s.service failed because the control process exited with error code.")
    sys.exit(1)
state = here / "unit-state"
if verb == "is-active":
    sys.exit(0 if state.exists() and state.read_text() == "active" else 3)
if verb in ("start", "restart") or (verb == "enable" and "--now" in args):
    delay = here / "start-delay"
    if delay.exists():
        time.sleep(float(delay.read_text()))
    files = sorted(str(p.relative_to(here)) for p in here.rglob("*") if p.is_file())
    (here / "files-at-start.json").write_text(json.dumps(files))
    state.write_text("active")
"""


class Node:
    """A node's file system in tmp_path, its configuration and a way to run the script."""

    def __init__(self, root: Path, script: Path):
        self.root = root
        self.script = script
        self.files = {
            "token_file": root / "etc/rancher/k3s/token",
            "admin_keys_file": root / "etc/blueprints/admin-keys/deploy",
            "join_dropin": root / "etc/rancher/k3s/config.yaml.d/50-blueprints-join.yaml",
            "etcd_s3_dropin": root / "etc/rancher/k3s/config.yaml.d/60-blueprints-etcd-s3.yaml",
            "joined_marker": root / "var/lib/blueprints/k3s-joined",
        }
        self.tls_dir = root / "var/lib/rancher/k3s/server/tls"
        self.systemctl = root / "systemctl"
        self.systemctl.write_text(FAKE_SYSTEMCTL.format(python=sys.executable))
        self.systemctl.chmod(0o755)
        self.log = root / "systemctl.log"
        self.events_log = root / "events.log"
        self.config_file = root / "node.json"

    def configure(self, peers, *, name="cp-1", role="server", local_api=None, **overrides):
        server = role == "server"
        config = {
            "name": name,
            "role": role,
            "first": False,
            "peers": peers,
            "local_api": local_api if server else None,
            "nodes": NODES,
            "unit": "k3s.service" if server else "k3s-agent.service",
            # a command path, as the bootstrap writes it
            "systemctl": str(self.systemctl),
            **{key: str(path) for key, path in self.files.items()},
            "tls_dir": str(self.tls_dir),
            "join_wait": 0.3,
            "ready_timeout": 5,
            "progress_every": 0.2,
            "poll_every": 0.03,
            "ping_timeout": 1,
            "request_timeout": 2,
        }
        if not server:
            config["etcd_s3_dropin"] = None
        config.update(overrides)
        self.config_file.write_text(json.dumps(config))
        return self.config_file

    def mark_joined(self):
        marker = self.files["joined_marker"]
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("joined\n")

    def unit_active(self, active: bool = True):
        (self.root / "unit-state").write_text("active" if active else "inactive")

    def run(self, secrets, *args: str, config: Path | None = None):
        data = secrets if isinstance(secrets, bytes) else json.dumps(secrets).encode()
        self.log.unlink(missing_ok=True)
        self.events_log.unlink(missing_ok=True)
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

    def events(self) -> list[list[str]]:
        if not self.events_log.exists():
            return []
        return [json.loads(line) for line in self.events_log.read_text().splitlines()]

    def files_at_start(self) -> list[str]:
        return json.loads((self.root / "files-at-start.json").read_text())

    def nothing_written(self) -> bool:
        return not (self.root / "etc").exists() and not (self.root / "var").exists()


@pytest.fixture
def node(tmp_path, script) -> Node:
    return Node(tmp_path, script)


@pytest.fixture
def cluster(tmp_path) -> Cluster:
    return Cluster(tmp_path)


@pytest.fixture
def k3s(pki, cluster, request) -> Callable[..., FakeK3s]:
    """Starts fake API servers of the cluster; each is stopped when the test ends."""

    def start(**options) -> FakeK3s:
        fake = FakeK3s(pki, cluster, **options)
        request.addfinalizer(fake.stop)
        return fake

    return start


def out_lines(result) -> list[str]:
    return result.stdout.decode().splitlines()


def err_lines(result) -> list[str]:
    return result.stderr.decode().splitlines()


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


def assert_no_secret(result, secrets: dict):
    output = result.stdout.decode() + result.stderr.decode()
    assert "Traceback" not in output
    assert TOKEN not in output and S3_SECRET not in output and MARKER not in output
    keys = [secrets["client_key"], *(secrets["pki"] or {}).values()]
    for text in keys:
        for line in text.splitlines():
            if not line.startswith("-----"):
                assert line not in output


def ready_line(name: str, etcd: int | None = None, cluster: int | None = None) -> str:
    line = f"{name}: ready: node {name} is Ready"
    if etcd is not None:
        line += f"; etcd answers here and all {etcd} etcd members' nodes are Ready"
    if cluster is not None:
        servers = 3
        line += (
            f"; all {cluster} nodes of the cluster are Ready; etcd has one member on each of the "
            f"{servers} control plane(s)"
        )
    return line


# -- a fresh machine: found or join ---------------------------------------------------------------


def test_the_first_control_plane_founds_a_new_cluster_when_no_peer_answers(node, cluster, k3s, pki):
    local = k3s()
    cluster.on_start("cp-1")
    down = [closed_port_url(), closed_port_url()]
    node.configure(down, local_api=local.url, first=True, progress_every=0.1)
    secrets = pki.secrets(pki=pki.tls_files(), etcd_s3=ETCD_S3)

    result = node.run(secrets)

    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    lines = out_lines(result)
    assert lines[:3] == [
        "cp-1: cluster token written",
        "cp-1: admin keys written",
        "cp-1: etcd S3 settings written",
    ]
    assert any(
        line.startswith("cp-1: still waiting for a control plane to answer /ping; last answer: ")
        and f"{down[0]}: cannot connect to {down[0]}: Connection refused" in line
        for line in lines
    ), lines
    tls = node.tls_dir
    assert lines[-6:] == [
        "cp-1: no other control plane answered within 0.3 s: founding a new cluster "
        "(cluster-init); if this cluster existed before, restore etcd from a snapshot (see the "
        "README's k8s section)",
        f"cp-1: wrote the cluster's CAs and keys (5 files) under {tls}",
        "cp-1: join settings written",
        "cp-1: joined marker written",
        "cp-1: enabled and started k3s.service",
        ready_line("cp-1", etcd=1),
    ]
    assert_no_secret(result, secrets)

    for relative, text in pki.tls_files().items():
        path = tls / relative
        assert path.read_text() == text, relative
        assert mode(path) == (0o644 if relative.endswith(".crt") else 0o600), relative
    assert mode(tls) == mode(tls / "etcd") == 0o700
    assert [p.name for p in tls.iterdir() if p.name.startswith(".")] == []

    files = node.files
    assert json.loads(files["join_dropin"].read_text()) == {"cluster-init": True}
    assert json.loads(files["etcd_s3_dropin"].read_text()) == ETCD_S3
    assert files["token_file"].read_text() == TOKEN + "\n"
    assert files["admin_keys_file"].read_text() == ADMIN_KEYS
    expected_modes = {
        "token_file": 0o600,
        "admin_keys_file": 0o644,
        "join_dropin": 0o600,
        "etcd_s3_dropin": 0o600,
        "joined_marker": 0o600,
    }
    assert {key: mode(path) for key, path in files.items()} == expected_modes
    assert mode(node.root / "etc/rancher/k3s") == 0o755

    assert node.systemctl_calls() == [["enable", "--now", "k3s.service"]]
    started_with = node.files_at_start()
    for key in ("token_file", "join_dropin", "joined_marker", "etcd_s3_dropin"):
        assert str(files[key].relative_to(node.root)) in started_with, key
    assert [e for e in node.events() if e[0] == "http"] == []
    assert local.count("GET", "/readyz/etcd") >= 1
    # every API request carried the admin certificate
    assert {org for path, org in local.clients} == {"system:masters"}


def test_a_fresh_replacement_joins_through_the_answering_peer_and_removes_its_stale_record(
    node, cluster, k3s, pki
):
    cluster.healthy(skip=["cp-2"])
    cluster.add("cp-2", ready=False, reason="NodeStatusUnknown", message="Kubelet stopped")
    cluster.on_start("cp-2")
    cluster.secrets = {"cp-2.node-password.k3s", "cp-3.node-password.k3s"}
    cluster.delete_takes = 3
    # the peer answers /ping from its third request on
    peer = k3s(ping=lambda n: (503, b"starting") if n <= 2 else (200, b"pong"))
    local = k3s()
    down = closed_port_url()
    node.configure([down, peer.url], name="cp-2", local_api=local.url, join_wait=5)
    secrets = pki.secrets(etcd_s3=ETCD_S3)

    result = node.run(secrets)

    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    lines = out_lines(result)
    assert lines[3:] == [
        f"cp-2: {peer.url} answers: joining the cluster through it",
        "cp-2: removed the stale node object cp-2 of the machine this one replaces",
        "cp-2: deleted the stale node password secret kube-system/cp-2.node-password.k3s",
        "cp-2: join settings written",
        "cp-2: joined marker written",
        "cp-2: enabled and started k3s.service",
        ready_line("cp-2", etcd=3),
    ]
    assert_no_secret(result, secrets)

    assert json.loads(node.files["join_dropin"].read_text()) == {"server": peer.url}
    assert node.files["joined_marker"].exists()
    assert not node.tls_dir.exists()
    # deleted, then waited for until gone, then its password, then k3s starts
    assert node.events() == [
        ["http", "DELETE", "/api/v1/nodes/cp-2"],
        ["http", "DELETE", "/api/v1/namespaces/kube-system/secrets/cp-2.node-password.k3s"],
        ["systemctl", "enable", "--now", "k3s.service"],
    ]
    assert peer.count("GET", "/api/v1/nodes/cp-2") == 1 + 3 + 1
    assert peer.count("GET", "/ping") == 3
    assert cluster.deleted_secrets == ["cp-2.node-password.k3s"]
    assert cluster.secrets == {"cp-3.node-password.k3s"}
    assert str(node.files["joined_marker"].relative_to(node.root)) in node.files_at_start()
    # the new node registered and is the one that is Ready
    assert local.count("GET", "/api/v1/nodes/cp-2") >= 1


def test_a_fresh_worker_joins_the_first_control_plane_that_answers(node, cluster, k3s, pki):
    cluster.healthy(skip=["worker-1"])
    cluster.on_start("worker-1", ready=3)
    cp2, cp3 = k3s(), k3s()
    peers = [closed_port_url(), cp2.url, cp3.url]
    node.configure(peers, name="worker-1", role="agent", progress_every=0.01)
    secrets = pki.secrets()

    result = node.run(secrets)

    assert result.returncode == 0, result.stderr
    lines = out_lines(result)
    assert lines[:2] == ["worker-1: cluster token written", "worker-1: admin keys written"]
    assert f"worker-1: {cp2.url} answers: joining the cluster through it" in lines
    assert not any("stale" in line for line in lines), lines
    assert any(
        line.startswith(
            "worker-1: still waiting for this node (worker-1) to be Ready; last answer: "
            "worker-1: Ready=False (KubeletNotReady: starting)"
        )
        for line in lines
    ), lines
    assert lines[-1] == ready_line("worker-1")
    assert_no_secret(result, secrets)

    assert json.loads(node.files["join_dropin"].read_text()) == {"server": cp2.url}
    assert not node.files["etcd_s3_dropin"].exists()
    assert node.systemctl_calls() == [["enable", "--now", "k3s-agent.service"]]
    # no node to delete; its password secret did not exist either (404 is fine)
    assert [e for e in node.events() if e[0] == "http"] == [
        ["http", "DELETE", "/api/v1/namespaces/kube-system/secrets/worker-1.node-password.k3s"]
    ]
    assert cp2.count("GET", "/readyz/etcd") == cp3.count("GET", "/readyz/etcd") == 0
    assert cp2.count("GET", "/api/v1/nodes/worker-1") >= 4
    assert cp3.count("GET", "/api/v1/nodes/worker-1") == 0


def test_a_node_that_reaches_no_control_plane_does_not_join(node, pki):
    down = [closed_port_url(), closed_port_url()]
    node.configure(down, name="cp-2", local_api=closed_port_url(), progress_every=0.1)

    result = node.run(pki.secrets())

    assert result.returncode == 1
    [line] = err_lines(result)
    assert line.startswith(
        f"cp-2: no control plane answered at {down[0]}, {down[1]} within 0.3 s (this node's "
        "private network may not be up, or the cluster is down); not joined; last answers: "
        f"{down[0]}: cannot connect to {down[0]}: Connection refused; "
    )
    assert any("still waiting for a control plane to answer /ping" in x for x in out_lines(result))
    assert not node.files["joined_marker"].exists()
    assert not node.files["join_dropin"].exists()
    assert node.systemctl_calls() == []
    assert_no_secret(result, pki.secrets())


def test_the_first_control_plane_does_not_found_without_the_cluster_cas(node, pki):
    node.configure([closed_port_url()], local_api=closed_port_url(), first=True, join_wait=0.1)

    result = node.run(pki.secrets())

    assert result.returncode == 1
    assert err_lines(result) == [
        "cp-1: no control plane answered within 0.1 s and stdin carries no pki: cannot found a "
        "new cluster without its CAs (not joined)"
    ]
    assert not node.files["joined_marker"].exists()
    assert not node.files["join_dropin"].exists()
    assert node.systemctl_calls() == []


def test_the_first_control_plane_joins_when_a_peer_answers(node, cluster, k3s, pki):
    """A replaced cp-1 never founds a second cluster: its CAs from stdin stay unused."""
    cluster.healthy(skip=["cp-1"])
    cluster.on_start("cp-1")
    peer, local = k3s(), k3s()
    node.configure([closed_port_url(), peer.url], local_api=local.url, first=True)

    result = node.run(pki.secrets(pki=pki.tls_files()))

    assert result.returncode == 0, result.stderr
    assert json.loads(node.files["join_dropin"].read_text()) == {"server": peer.url}
    assert not node.tls_dir.exists()
    assert out_lines(result)[-1] == ready_line("cp-1", etcd=3)


def test_a_failing_systemctl_ends_the_run(node, cluster, k3s, pki):
    cluster.healthy(skip=["cp-2"])
    peer = k3s()
    node.configure([peer.url], name="cp-2", local_api=closed_port_url())
    (node.root / "systemctl-fail-enable").write_text("")

    result = node.run(pki.secrets())

    assert result.returncode == 1
    assert err_lines(result) == [
        "cp-2: systemctl enable --now k3s.service failed with exit status 1: Job for "
        "k3s.service failed because the control process exited with error code."
    ]
    # the marker is set before k3s is first started: the next run never deletes this node
    assert node.files["joined_marker"].exists()


# -- a node that has joined before ----------------------------------------------------------------

IS_ACTIVE = ["is-active", "--quiet", "k3s.service"]


def test_a_rerun_with_the_marker_never_deletes_and_restarts_only_on_changes(
    node, cluster, k3s, pki
):
    cluster.healthy()
    cluster.secrets = {"cp-2.node-password.k3s"}
    peer, local = k3s(), k3s()
    node.configure([peer.url], name="cp-2", local_api=local.url)
    node.mark_joined()
    node.unit_active()

    first = node.run(pki.secrets(etcd_s3=ETCD_S3))
    assert first.returncode == 0, first.stderr
    assert (
        f"cp-2: joined before ({node.files['joined_marker']} exists): no node object is removed"
        in out_lines(first)
    )
    assert "cp-2: restarted k3s.service (its token or etcd S3 settings changed)" in out_lines(first)
    assert node.systemctl_calls() == [IS_ACTIVE, ["restart", "k3s.service"]]

    kept = [key for key in node.files if key != "join_dropin"]
    inodes = {key: node.files[key].stat().st_ino for key in kept}
    same = node.run(pki.secrets(etcd_s3=ETCD_S3))
    assert same.returncode == 0, same.stderr
    assert out_lines(same) == [
        "cp-2: cluster token unchanged",
        "cp-2: admin keys unchanged",
        "cp-2: etcd S3 settings unchanged",
        f"cp-2: joined before ({node.files['joined_marker']} exists): no node object is removed",
        "cp-2: k3s.service is running and its token and settings are unchanged",
        ready_line("cp-2", etcd=3),
    ]
    assert node.systemctl_calls() == [IS_ACTIVE]
    assert {key: node.files[key].stat().st_ino for key in kept} == inodes

    # nothing was ever deleted or asked of the peers, and the join settings are not written
    assert cluster.deleted_secrets == []
    assert "cp-2" in cluster.nodes
    assert [e for e in node.events() if e[0] == "http"] == []
    assert peer.count("GET", "/ping") == 0
    assert sum(peer.hits.values()) == 0
    assert not node.files["join_dropin"].exists()

    # new admin keys concern sshd, not k3s
    keys = node.run(pki.secrets(etcd_s3=ETCD_S3, admin_keys=""))
    assert keys.returncode == 0, keys.stderr
    assert "cp-2: admin keys updated" in out_lines(keys)
    assert node.systemctl_calls() == [IS_ACTIVE]


def test_a_token_change_restarts_and_a_null_etcd_s3_removes_its_dropin(node, cluster, k3s, pki):
    cluster.healthy()
    local = k3s()
    node.configure([closed_port_url()], local_api=local.url)
    node.mark_joined()
    node.unit_active()
    assert node.run(pki.secrets(etcd_s3=ETCD_S3)).returncode == 0

    rotated = node.run(pki.secrets(etcd_s3=ETCD_S3, token="K10rotated::server:new"))
    assert rotated.returncode == 0, rotated.stderr
    assert out_lines(rotated)[:3] == [
        "cp-1: cluster token updated",
        "cp-1: admin keys unchanged",
        "cp-1: etcd S3 settings unchanged",
    ]
    assert node.systemctl_calls() == [IS_ACTIVE, ["restart", "k3s.service"]]
    assert node.files["token_file"].read_text() == "K10rotated::server:new\n"
    assert mode(node.files["token_file"]) == 0o600

    dropped = node.run(pki.secrets(token="K10rotated::server:new"))
    assert dropped.returncode == 0, dropped.stderr
    assert "cp-1: etcd S3 settings removed" in out_lines(dropped)
    assert not node.files["etcd_s3_dropin"].exists()
    assert node.systemctl_calls() == [IS_ACTIVE, ["restart", "k3s.service"]]

    again = node.run(pki.secrets(token="K10rotated::server:new"))
    assert again.returncode == 0, again.stderr
    assert "cp-1: etcd S3 settings absent" in out_lines(again)
    assert node.systemctl_calls() == [IS_ACTIVE]


def test_an_inactive_unit_of_a_joined_node_is_started_and_waited_for(node, cluster, k3s, pki):
    cluster.healthy()
    local = k3s()
    node.configure(
        [closed_port_url()],
        local_api=local.url,
        progress_every=0.1,
        systemctl=[sys.executable, str(node.systemctl)],
    )
    node.mark_joined()
    node.unit_active(False)
    (node.root / "start-delay").write_text("0.4")

    result = node.run(pki.secrets())

    assert result.returncode == 0, result.stderr
    lines = out_lines(result)
    assert "cp-1: still waiting for systemctl start k3s.service to return" in lines
    assert "cp-1: started k3s.service (it was not running)" in lines
    assert node.systemctl_calls() == [IS_ACTIVE, ["start", "k3s.service"]]


# -- waiting for Ready ----------------------------------------------------------------------------


def test_waiting_for_ready_shows_progress_and_times_out_with_the_last_answer(
    node, cluster, k3s, pki
):
    cluster.healthy(skip=["cp-1"])
    cluster.add(
        "cp-1",
        ready=False,
        message="container runtime network not ready: cni plugin not initialized",
    )
    local = k3s()
    node.configure([closed_port_url()], local_api=local.url, ready_timeout=0.6, progress_every=0.1)
    node.mark_joined()
    node.unit_active()

    result = node.run(pki.secrets())

    assert result.returncode == 1
    answer = (
        "cp-1: Ready=False (KubeletNotReady: container runtime network not ready: cni plugin "
        "not initialized)"
    )
    assert err_lines(result) == [
        f"cp-1: not ready after 0.6 s: waiting for this node (cp-1) to be Ready; last answer: "
        f"{answer}"
    ]
    progress = [x for x in out_lines(result) if x.startswith("cp-1: still waiting for ")]
    assert len(progress) >= 3
    assert progress[0] == (
        f"cp-1: still waiting for this node (cp-1) to be Ready; last answer: {answer}"
    )
    assert local.count("GET", "/api/v1/nodes/cp-1") > 5


def test_a_node_the_api_does_not_list_yet_is_waited_for(node, cluster, k3s, pki):
    cluster.healthy(skip=["cp-1"])
    local = k3s()
    node.configure([closed_port_url()], local_api=local.url, ready_timeout=0.3)
    node.mark_joined()
    node.unit_active()

    result = node.run(pki.secrets())

    assert result.returncode == 1
    assert err_lines(result) == [
        "cp-1: not ready after 0.3 s: waiting for this node (cp-1) to be Ready; last answer: "
        f"{local.url} lists no node cp-1 yet"
    ]


def test_a_control_plane_waits_for_etcd_and_every_etcd_member(node, cluster, k3s, pki):
    cluster.healthy(skip=["cp-3"])
    cluster.add("cp-3", ready=6, message="PLEG is not healthy")
    local = k3s(readyz=lambda n: (503, b"[-]etcd failed: not ready") if n <= 3 else (200, b"ok"))
    node.configure(
        [closed_port_url(), closed_port_url()], local_api=local.url, progress_every=0.001
    )
    node.mark_joined()
    node.unit_active()

    result = node.run(pki.secrets(), "--cluster")

    assert result.returncode == 0, result.stderr
    lines = out_lines(result)
    assert lines[-1] == ready_line("cp-1", etcd=3, cluster=6)
    assert (
        "cp-1: still waiting for etcd on this control plane to be ready (/readyz/etcd); last "
        "answer: HTTP 503: [-]etcd failed: not ready"
    ) in lines
    assert (
        "cp-1: still waiting for every etcd member's node to be Ready; last answer: cp-3: "
        "Ready=False (KubeletNotReady: PLEG is not healthy)"
    ) in lines
    assert local.count("GET", "/readyz/etcd") >= 4


def test_a_control_plane_is_not_ready_while_another_etcd_member_is_down(node, cluster, k3s, pki):
    cluster.healthy(skip=["cp-2"])
    cluster.add("cp-2", ready=False, reason="NodeStatusUnknown", message="Kubelet stopped")
    local = k3s()
    node.configure([closed_port_url()], local_api=local.url, ready_timeout=0.3)
    node.mark_joined()
    node.unit_active()

    result = node.run(pki.secrets())

    assert result.returncode == 1
    assert err_lines(result) == [
        "cp-1: not ready after 0.3 s: waiting for every etcd member's node to be Ready; last "
        "answer: cp-2: Ready=False (NodeStatusUnknown: Kubelet stopped)"
    ]


def test_cluster_waits_for_every_node_and_one_etcd_member_per_control_plane(
    node, cluster, k3s, pki
):
    cluster.healthy(skip=["worker-3"])
    cluster.add("worker-3", ready=4, message="starting")
    cp1, cp2, cp3 = k3s(), k3s(), k3s()
    node.configure([cp1.url, cp2.url, cp3.url], name="worker-2", role="agent", progress_every=0.001)
    node.mark_joined()
    node.unit_active()

    result = node.run(pki.secrets(), "--cluster")

    assert result.returncode == 0, result.stderr
    lines = out_lines(result)
    assert lines[-1] == ready_line("worker-2", cluster=6)
    assert (
        "worker-2: still waiting for all 6 nodes of the cluster to be Ready; last answer: "
        "worker-3: Ready=False (KubeletNotReady: starting)"
    ) in lines
    assert cp1.count("GET", "/api/v1/nodes") >= 4
    assert cp1.count("GET", "/readyz/etcd") == 0

    # a node missing from the list
    del cluster.nodes["worker-3"]
    node.configure([cp1.url, cp2.url, cp3.url], name="worker-2", role="agent", ready_timeout=0.3)
    missing = node.run(pki.secrets(), "--cluster")
    assert missing.returncode == 1
    assert err_lines(missing) == [
        "worker-2: not ready after 0.3 s: waiting for all 6 nodes of the cluster to be Ready; "
        "last answer: not listed: worker-3"
    ]

    # every node Ready, but a control plane without an etcd member
    cluster.add("worker-3")
    cluster.add("cp-3", etcd=False)
    short = node.run(pki.secrets(), "--cluster")
    assert short.returncode == 1
    assert err_lines(short) == [
        "worker-2: not ready after 0.3 s: waiting for 3 etcd members (one per control plane); "
        f"last answer: 2 node(s) labelled {ETCD_LABEL}=true: cp-1, cp-2"
    ]
    # without --cluster, the worker itself is all it waits for
    assert node.run(pki.secrets()).returncode == 0


def test_an_agent_waits_for_a_control_plane_to_answer(node, cluster, k3s, pki):
    cluster.healthy()
    node.configure([closed_port_url()], name="worker-1", role="agent", ready_timeout=0.3)
    node.mark_joined()
    node.unit_active()

    result = node.run(pki.secrets())

    assert result.returncode == 1
    [line] = err_lines(result)
    assert line.startswith(
        "worker-1: not ready after 0.3 s: waiting for a control plane to answer /ping; last "
        "answer: https://127.0.0.1:"
    )
    assert "Connection refused" in line


def test_the_api_answers_only_the_admin_certificate(node, cluster, k3s, pki):
    cluster.healthy()
    local = k3s()
    # the fake itself: no client certificate, no API
    context = ssl.create_default_context(cadata=pki.ca)
    context.check_hostname = False
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{local.url}/api/v1/nodes", context=context, timeout=5)
    assert refused.value.code == 401

    node.configure([closed_port_url()], local_api=local.url, ready_timeout=0.3)
    node.mark_joined()
    node.unit_active()
    result = node.run(pki.secrets(client="developer"))
    assert result.returncode == 1
    assert err_lines(result) == [
        "cp-1: not ready after 0.3 s: waiting for this node (cp-1) to be Ready; last answer: "
        'HTTP 401: {"kind": "Status", "code": 401, "message": "Unauthorized"}'
    ]
    assert {org for _, org in local.clients if org} == {"developers"}


def test_an_api_server_outside_the_cluster_ca_is_a_tls_error(node, cluster, k3s, pki):
    cluster.healthy()
    local = k3s()
    node.configure([closed_port_url()], local_api=local.url, ready_timeout=0.3)
    node.mark_joined()
    node.unit_active()

    result = node.run(pki.secrets(ca=pki.foreign_ca))

    assert result.returncode == 1
    [line] = err_lines(result)
    assert line.startswith(
        "cp-1: not ready after 0.3 s: waiting for this node (cp-1) to be Ready; last answer: "
        f"TLS error from {local.url}: "
    )
    assert "CERTIFICATE_VERIFY_FAILED" in line


def test_garbage_from_the_api_is_an_answer_not_a_crash(node, cluster, k3s, pki, monkeypatch):
    local = k3s()
    monkeypatch.setattr(cluster, "answer", lambda *args: (200, b"<html>proxy</html>"))
    node.configure([closed_port_url()], local_api=local.url, ready_timeout=0.3)
    node.mark_joined()
    node.unit_active()

    result = node.run(pki.secrets())

    assert result.returncode == 1
    assert err_lines(result) == [
        "cp-1: not ready after 0.3 s: waiting for this node (cp-1) to be Ready; last answer: "
        "HTTP 200 with a body that is not JSON: <html>proxy</html>"
    ]


# -- --cluster: etcd's own member list ------------------------------------------------------------

ETCD_WHAT = "3 etcd members (one per control plane) in etcd's member list (/db/info)"


def test_cluster_fails_on_a_stale_extra_etcd_member_and_passes_once_members_match(
    node, cluster, k3s, pki
):
    cluster.healthy()
    # cp-2 was replaced: its old member is still there next to the new one
    cluster.members = [member("cp-1"), member("cp-2", "0ld0ld00"), member("cp-2"), member("cp-3")]
    local = k3s()
    down = [closed_port_url(), closed_port_url()]
    node.configure(down, local_api=local.url, ready_timeout=0.3)
    node.mark_joined()
    node.unit_active()

    stale = node.run(pki.secrets(), "--cluster")

    assert stale.returncode == 1
    assert err_lines(stale) == [
        f"cp-1: not ready after 0.3 s: waiting for {ETCD_WHAT}; last answer: 4 member(s): "
        "cp-1-5e1f00d4, cp-2-0ld0ld00, cp-2-5e1f00d4, cp-3-5e1f00d4"
    ]
    # basic auth as "server" with the secure token's secret, and no admin certificate
    assert set(local.authorizations) == {SUPERVISOR_AUTH}
    assert {org for path, org in local.clients if path == "/db/info"} == {None}
    assert_no_secret(stale, pki.secrets())

    # as many members as control planes, but one of them on no node of the cluster
    cluster.members = [member("cp-1"), member("cp-2", "0ld0ld00"), member("cp-9")]
    foreign = node.run(pki.secrets(), "--cluster")
    assert foreign.returncode == 1
    assert err_lines(foreign) == [
        f"cp-1: not ready after 0.3 s: waiting for {ETCD_WHAT}; last answer: member "
        "cp-9-5e1f00d4 is on no Ready etcd node (Ready etcd nodes: cp-1, cp-2, cp-3)"
    ]

    # two members on one node, or one that is not Ready
    cluster.members = [member("cp-1"), member("cp-2", "0ld0ld00"), member("cp-2")]
    double = node.run(pki.secrets(), "--cluster")
    assert err_lines(double)[0].endswith(
        "last answer: members cp-2-0ld0ld00 and cp-2-5e1f00d4 are both on cp-2"
    )
    cluster.members = [member("cp-1"), member("cp-2"), member("cp-3", learner=True)]
    learner = node.run(pki.secrets(), "--cluster")
    assert err_lines(learner)[0].endswith("last answer: member cp-3-5e1f00d4 is still a learner")

    # the stale member was removed: the members match the control planes
    cluster.members = [member("cp-3"), member("cp-1"), member("cp-2", "0ld0ld00")]
    matching = node.run(pki.secrets(), "--cluster")
    assert matching.returncode == 0, matching.stderr
    assert out_lines(matching)[-1] == ready_line("cp-1", etcd=3, cluster=6)


def test_cluster_keeps_waiting_when_db_info_refuses_or_is_missing(node, cluster, k3s, pki):
    cluster.healthy()
    cp1, cp2, cp3 = k3s(), k3s(), k3s()
    peers = [cp1.url, cp2.url, cp3.url]
    # Long enough for three polls (30 ms apart) on a busy machine: the suite runs on every core.
    node.configure(peers, name="worker-2", role="agent", ready_timeout=1.5, progress_every=0.05)
    node.mark_joined()
    node.unit_active()
    other = "K10" + "0f" * 32 + "::server:not-the-clusters-secret"

    refused = node.run(pki.secrets(token=other), "--cluster")

    assert refused.returncode == 1
    assert err_lines(refused) == [
        f"worker-2: not ready after 1.5 s: waiting for {ETCD_WHAT}; last answer: /db/info "
        'refused the cluster token: HTTP 401: {"kind": "Status", "code": 401, "message": "no"}'
    ]
    assert any(f"still waiting for {ETCD_WHAT}" in line for line in out_lines(refused))
    assert cp1.count("GET", "/db/info") >= 3
    assert "not-the-clusters-secret" not in refused.stdout.decode() + refused.stderr.decode()

    missing = k3s(db_info=lambda n: (404, b"404 page not found"))
    peers = [missing.url, cp2.url, cp3.url]
    node.configure(peers, name="worker-2", role="agent", ready_timeout=0.3)
    absent = node.run(pki.secrets(), "--cluster")
    assert absent.returncode == 1
    assert err_lines(absent) == [
        f"worker-2: not ready after 0.3 s: waiting for {ETCD_WHAT}; last answer: /db/info is "
        "not served here (no embedded etcd?): HTTP 404: 404 page not found"
    ]


@pytest.mark.parametrize(
    ("token", "password"),
    [
        (TOKEN, TOKEN_SECRET),
        ("K10" + "ab" * 32 + "::server:s3cr:et", "s3cr:et"),
        ("K10::server:secret", "secret"),
        ("a-bare-secret", "a-bare-secret"),
    ],
)
def test_the_supervisor_password_is_the_secret_part_of_a_secure_token(token, password):
    assert supervisor_password(token) == password


# -- the app's workloads --------------------------------------------------------------------------


def test_app_namespace_waits_for_its_deployments_and_statefulsets(node, cluster, k3s, pki):
    cluster.healthy()
    cluster.namespaces = {"shop"}
    cluster.workload("shop", "deployments", "web", replicas=2, ready=2, after=3)
    cluster.workload("shop", "statefulsets", "db", replicas=None)
    cp2 = k3s()
    node.configure(
        [cp2.url], name="worker-1", role="agent", app_namespace="shop", progress_every=0.001
    )
    node.mark_joined()
    node.unit_active()

    result = node.run(pki.secrets())

    assert result.returncode == 0, result.stderr
    lines = out_lines(result)
    assert (
        "worker-1: still waiting for the Deployments and StatefulSets in namespace shop to be "
        "ready; last answer: deployment web 0/2 ready, 0/2 updated"
    ) in lines
    assert lines[-1] == (
        ready_line("worker-1") + "; all 2 Deployments and StatefulSets in namespace shop are ready"
    )
    assert cp2.count("GET", "/apis/apps/v1/namespaces/shop/deployments") == 4

    # ready but not all updated: still waiting, until the time limit
    cluster.workload("shop", "statefulsets", "db", replicas=3, ready=3, updated=2)
    node.configure(
        [cp2.url], name="worker-1", role="agent", app_namespace="shop", ready_timeout=0.3
    )
    rolling = node.run(pki.secrets())
    assert rolling.returncode == 1
    assert err_lines(rolling) == [
        "worker-1: not ready after 0.3 s: waiting for the Deployments and StatefulSets in "
        "namespace shop to be ready; last answer: statefulset db 3/3 ready, 2/3 updated"
    ]


def test_app_namespace_that_does_not_exist_yet_is_skipped(node, cluster, k3s, pki):
    cluster.healthy()
    local = k3s()
    node.configure([closed_port_url()], local_api=local.url, app_namespace="shop")
    node.mark_joined()
    node.unit_active()

    result = node.run(pki.secrets())

    assert result.returncode == 0, result.stderr
    assert out_lines(result)[-1] == (
        ready_line("cp-1", etcd=3) + "; namespace shop does not exist yet: no app to wait for"
    )
    assert local.count("GET", "/api/v1/namespaces/shop") == 1
    assert local.count("GET", "/apis/apps/v1/namespaces/shop/deployments") == 0


# -- --drain --------------------------------------------------------------------------------------

DRAINED = re.compile(
    r"^(?P<name>[a-z0-9-]+): drained: evicted (?P<count>\d+) pod\(s\) in \d+\.\d s "
    r"\((?P<skipped>\d+) DaemonSet, mirror or finished pod\(s\) left alone\); "
    r"(?P<node>removed its node object through \S+|its node object is kept \(no other control "
    r"plane answers\))$"
)
KEPT = "the old machine is kept (Pulumi stops before deleting it)"


def eviction(namespace: str, name: str) -> list:
    body = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": name, "namespace": namespace},
    }
    return ["http", "POST", f"/api/v1/namespaces/{namespace}/pods/{name}/eviction", body]


def test_drain_cordons_evicts_then_waits_until_the_pods_have_left(node, cluster, k3s, pki):
    cluster.healthy()
    cluster.pod("shop", "web-7d9f-x2x", "worker-1", linger=2)
    cluster.pod("shop", "db-0", "worker-1", owner="StatefulSet", linger=1, recreate_on="worker-2")
    cluster.pod("kube-system", "svclb-traefik-abc", "worker-1", owner="DaemonSet")
    cluster.pod("kube-system", "static-web-worker-1", "worker-1", owner="Node", mirror=True)
    cluster.pod("shop", "migrate-abc", "worker-1", owner="Job", phase="Succeeded")
    cluster.pod("shop", "web-7d9f-y3y", "worker-2")
    cp1 = k3s()
    node.configure([closed_port_url(), cp1.url], name="worker-1", role="agent", progress_every=60)
    secrets = pki.secrets()

    result = node.run(secrets, "--drain")

    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    lines = out_lines(result)
    assert lines[:3] == [
        f"worker-1: draining worker-1 through {cp1.url}",
        "worker-1: cordoned worker-1 (no new pods are scheduled on it)",
        "worker-1: evicting 2 pod(s) (3 left alone): shop/db-0, shop/web-7d9f-x2x",
    ]
    drained = DRAINED.match(lines[-1])
    assert drained is not None, lines[-1]
    assert drained.group("count", "skipped") == ("2", "3")
    # the machine leaves the cluster before Pulumi deletes it
    assert drained.group("node") == f"removed its node object through {cp1.url}"
    assert len(lines) == 4
    assert_no_secret(result, secrets)

    events = [e for e in node.events() if e[0] == "http"]
    # cordon, then the evictions, then the wait
    assert events[0] == [
        "http",
        "PATCH",
        "/api/v1/nodes/worker-1",
        {"spec": {"unschedulable": True}},
        "application/merge-patch+json",
    ]
    assert events[1:3] == [eviction("shop", "db-0"), eviction("shop", "web-7d9f-x2x")]
    # the wait for the pods, then the node's removal, once every pod has left
    removal = next(i for i, e in enumerate(events) if e[1] == "DELETE")
    assert events[removal][2] == "/api/v1/nodes/worker-1"
    assert {e[1] for e in events[3:removal]} == {"GET"}
    assert {e[2] for e in events[3:removal]} == {
        "/api/v1/namespaces/shop/pods/db-0",
        "/api/v1/namespaces/shop/pods/web-7d9f-x2x",
    }
    assert "worker-1" not in cluster.nodes
    assert cp1.queries == ["fieldSelector=spec.nodeName%3Dworker-1"]
    # the StatefulSet's pod came back elsewhere under a new uid; the rest left
    assert cluster.pods["shop", "db-0"]["node"] == "worker-2"
    assert ("shop", "web-7d9f-x2x") not in cluster.pods
    assert ("kube-system", "svclb-traefik-abc") in cluster.pods
    # a drain writes nothing and starts nothing
    assert node.nothing_written()
    assert node.systemctl_calls() == []


def test_drain_retries_an_eviction_a_disruption_budget_refuses(node, cluster, k3s, pki):
    cluster.healthy()
    cluster.pod("shop", "web-1", "cp-2", blocks=3)
    cluster.pod("shop", "web-2", "cp-2")
    local = k3s()
    node.configure([closed_port_url()], name="cp-2", local_api=local.url, progress_every=0.001)

    result = node.run(pki.secrets(etcd_s3=ETCD_S3), "--drain")

    assert result.returncode == 0, result.stderr
    lines = out_lines(result)
    assert (
        "cp-2: still waiting for the pods to be evicted; last answer: blocked by a "
        "PodDisruptionBudget: shop/web-1 (The disruption budget web needs 1 healthy pods and "
        "has 1 currently)"
    ) in lines
    drained = DRAINED.match(lines[-1])
    assert drained is not None and drained.group("count") == "2", lines[-1]
    # no other control plane answers: the Node stays (etcd keeps its last member)
    assert drained.group("node").startswith("its node object is kept")
    assert local.count("DELETE", "/api/v1/nodes/cp-2") == 0
    assert local.count("POST", "/api/v1/namespaces/shop/pods/web-1/eviction") == 4
    assert local.count("POST", "/api/v1/namespaces/shop/pods/web-2/eviction") == 1
    assert node.nothing_written()
    assert node.systemctl_calls() == []


def test_drain_times_out_naming_the_pods_still_there(node, cluster, k3s, pki):
    cluster.healthy()
    cluster.pod("shop", "web-1", "worker-3", linger=None)
    cluster.pod("shop", "web-2", "worker-3")
    cp1 = k3s()
    node.configure([cp1.url], name="worker-3", role="agent", drain_timeout=0.4)

    stuck = node.run(pki.secrets(), "--drain")

    assert stuck.returncode == 1
    assert err_lines(stuck) == [
        "worker-3: not drained after 0.4 s: waiting for the evicted pods to leave worker-3; "
        f"last answer: still there: shop/web-1 (Running, terminating); {KEPT}"
    ]

    # a budget that never allows the eviction
    cluster.pod("shop", "api-1", "worker-3", blocks=1000)
    blocked = node.run(pki.secrets(), "--drain")
    assert blocked.returncode == 1
    assert err_lines(blocked) == [
        "worker-3: not drained after 0.4 s: waiting for the pods to be evicted; last answer: "
        "blocked by a PodDisruptionBudget: shop/api-1 (The disruption budget web needs 1 "
        f"healthy pods and has 1 currently); {KEPT}"
    ]
    assert node.nothing_written()
    assert node.systemctl_calls() == []


def test_drain_of_a_node_the_api_does_not_list_is_done(node, cluster, k3s, pki):
    cluster.healthy(skip=["cp-2"])
    peer = k3s()
    # a control plane whose own API is down drains through another one
    node.configure([peer.url], name="cp-2", local_api=closed_port_url())

    result = node.run(pki.secrets(), "--drain")

    assert result.returncode == 0, result.stderr
    assert out_lines(result) == [
        f"cp-2: draining cp-2 through {peer.url}",
        "cp-2: the API lists no node cp-2: nothing to drain",
    ]
    assert node.events() == []
    assert node.nothing_written()


def test_drain_without_any_api_exits_1_and_keeps_the_machine(node, pki):
    down = [closed_port_url(), closed_port_url()]
    node.configure(down, name="worker-1", role="agent", join_wait=0.2)

    result = node.run(pki.secrets(), "--drain")

    assert result.returncode == 1
    [line] = err_lines(result)
    assert line.startswith(
        f"worker-1: cannot drain worker-1: no API server answered /ping at {down[0]}, {down[1]} "
        f"within 0.2 s; {KEPT}; last answers: {down[0]}: cannot connect to {down[0]}: "
    )
    assert line.endswith("; run `pulumi state delete` on this ready command to skip the drain")
    assert node.nothing_written()
    assert node.systemctl_calls() == []


def test_drain_checks_stdin_like_a_run(node, pki):
    node.configure([closed_port_url()], name="worker-1", role="agent")

    result = node.run(pki.secrets(token=MARKER + " x"), "--drain")

    assert result.returncode == 2
    [line] = err_lines(result)
    assert line.startswith("worker-1: refusing stdin: token is empty or holds whitespace")
    assert MARKER not in line
    assert node.nothing_written()


# -- refusals -------------------------------------------------------------------------------------


def _stdin_cases(pki: Pki) -> dict[str, tuple[str, bytes, str]]:
    """case -> (the node's kind, stdin, what the message says)."""
    good = pki.secrets()

    def with_(**changes):
        return json.dumps({**good, **changes}).encode()

    missing = dict(good)
    del missing["client_key"]
    garbage_ca = f"-----BEGIN CERTIFICATE-----\n{MARKER}\n-----END CERTIFICATE-----\n"
    other_key = pki.clients["developer"][1]
    return {
        "empty": ("server", b"", "it is empty"),
        "not utf-8": ("server", b"\xff\xfe" + MARKER.encode(), "it is not UTF-8 text"),
        "not json": ("server", f"{MARKER} is not JSON".encode(), "it is not valid JSON"),
        "not an object": ("server", json.dumps([MARKER]).encode(), "it is JSON but not an object"),
        "missing key": ("server", json.dumps(missing).encode(), "missing key(s) client_key"),
        "extra key": ("server", with_(tokens=MARKER), "unexpected key(s) tokens"),
        "odd extra key": ("server", with_(**{MARKER + " x": "y"}), "1 unexpected key(s)"),
        "not a string": ("server", with_(token=[MARKER]), "token is not a string"),
        "ca not PEM": ("server", with_(ca=MARKER), "ca is not a PEM certificate"),
        "ca garbage": ("server", with_(ca=garbage_ca), "ca is not a valid PEM certificate"),
        "cert not PEM": ("server", with_(client_cert=MARKER), "client_cert is not a PEM"),
        "key not PEM": (
            "server",
            with_(client_key="-----BEGIN CERTIFICATE-----\n" + MARKER),
            "client_key is not a PEM private key",
        ),
        "key of another cert": (
            "server",
            with_(client_key=other_key),
            "client_cert and client_key are not a valid certificate and its private key",
        ),
        "token empty": ("server", with_(token=""), "token is empty or holds whitespace"),
        "token with a space": ("server", with_(token=MARKER + " x"), "token is empty or holds"),
        "token with a newline": ("server", with_(token=MARKER + "\n"), "token is empty or holds"),
        "token not ascii": ("server", with_(token=MARKER + "é"), "token is empty or holds"),
        "bad admin key": (
            "server",
            with_(admin_keys=ADMIN_KEYS + "ssh-dss " + MARKER + "\n"),
            "admin_keys line 5 is not an OpenSSH public key (it must start with one of "
            "ssh-ed25519, ssh-rsa, ecdsa-sha2-, sk-ssh-ed25519@openssh.com, sk-ecdsa-sha2-)",
        ),
        "pki on a non-first node": (
            "server",
            with_(pki=pki.tls_files()),
            "pki is given but this node is not the first control plane (its configuration says "
            "first: false), and only the first may found a cluster",
        ),
        "pki escaping": (
            "first",
            with_(pki={"server-ca.crt": pki.ca, f"../{MARKER}": pki.ca}),
            "pki entry 1 is not a relative path under the TLS directory",
        ),
        "pki absolute": (
            "first",
            with_(pki={f"/etc/{MARKER}": pki.ca}),
            "pki entry 1 is not a relative path under the TLS directory",
        ),
        "pki dot": ("first", with_(pki={"etcd/./x.key": pki.ca}), "pki entry 1 is not a relative"),
        "pki not PEM": (
            "first",
            with_(pki={"server-ca.key": MARKER}),
            "pki entry server-ca.key is not a PEM text",
        ),
        "pki empty": ("first", with_(pki={}), "pki is neither null nor a non-empty object"),
        "pki a list": ("first", with_(pki=[MARKER]), "pki is neither null nor a non-empty object"),
        "etcd_s3 a string": ("server", with_(etcd_s3=MARKER), "etcd_s3 is neither null nor an"),
        "etcd_s3 key": (
            "server",
            with_(etcd_s3={**ETCD_S3, f"s3-{MARKER}": "x"}),
            "etcd_s3 entry 6 is not a k3s setting named etcd-...",
        ),
        "etcd_s3 value": (
            "server",
            with_(etcd_s3={**ETCD_S3, "etcd-s3-region": [MARKER]}),
            "etcd_s3 etcd-s3-region is not a string, an integer or a boolean",
        ),
        "etcd_s3 line break": (
            "server",
            with_(etcd_s3={**ETCD_S3, "etcd-s3-region": MARKER + "\nx: y"}),
            "etcd_s3 etcd-s3-region holds a line break",
        ),
        "etcd_s3 on an agent": (
            "agent",
            with_(etcd_s3=ETCD_S3),
            "etcd_s3 is given but this node is an agent (it runs no etcd)",
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
    "ca garbage",
    "cert not PEM",
    "key not PEM",
    "key of another cert",
    "token empty",
    "token with a space",
    "token with a newline",
    "token not ascii",
    "bad admin key",
    "pki on a non-first node",
    "pki escaping",
    "pki absolute",
    "pki dot",
    "pki not PEM",
    "pki empty",
    "pki a list",
    "etcd_s3 a string",
    "etcd_s3 key",
    "etcd_s3 value",
    "etcd_s3 line break",
    "etcd_s3 on an agent",
]


@pytest.mark.parametrize("case", STDIN_CASES)
def test_bad_stdin_is_refused_and_nothing_is_written(node, pki, case):
    kind, data, expected = _stdin_cases(pki)[case]
    name = "worker-1" if kind == "agent" else "cp-1"
    node.configure(
        [closed_port_url()],
        name=name,
        role="agent" if kind == "agent" else "server",
        local_api=closed_port_url(),
        first=kind == "first",
    )

    result = node.run(data)

    assert result.returncode == 2
    assert result.stdout == b""
    [line] = err_lines(result)
    assert line.startswith(f"{name}: refusing stdin: {expected}")
    assert line.endswith(f"; {STDIN_EXPECTED}")
    assert_no_secret(result, pki.secrets())
    assert node.nothing_written()
    assert node.systemctl_calls() == []


def test_the_stdin_cases_are_all_run(pki):
    assert sorted(STDIN_CASES) == sorted(_stdin_cases(pki))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (None, "cannot read it (No such file or directory)"),
        ("{not json", "it is not valid JSON"),
        ("[]", "expected a JSON object"),
        ('{"name": "cp-1"}', "missing role, peers, nodes, unit, token_file, admin_keys_file"),
        ({"role": "worker"}, 'role must be "server" or "agent"'),
        ({"name": "CP_1"}, "name must be a Kubernetes node name (lowercase DNS name)"),
        ({"name": "cp-1\n"}, "name must be a Kubernetes node name"),
        ({"peers": "https://10.0.1.3:6443"}, "peers must be a list of https:// URLs"),
        ({"peers": ["http://10.0.1.3:6443"]}, "peers must be a list of https:// URLs"),
        ({"peers": []}, "peers must not be empty unless first is true"),
        ({"nodes": ["cp-2"]}, "nodes must include this node's name (cp-1)"),
        ({"local_api": None}, "local_api must be an https:// URL on a server"),
        ({"etcd_s3_dropin": None}, "etcd_s3_dropin must be an absolute path on a server"),
        ({"token_file": "etc/token"}, "token_file must be an absolute path"),
        ({"systemctl": []}, "systemctl must be a command"),
        ({"first": "yes"}, "first must be true or false"),
        ({"first": True, "tls_dir": None}, "tls_dir must be an absolute path on the first"),
        ({"ready_timeout": 0}, "ready_timeout must be a positive number"),
        ({"join_wait": True}, "join_wait must be a positive number"),
        ({"drain_timeout": 0}, "drain_timeout must be a positive number"),
        ({"app_namespace": "Shop"}, "app_namespace must be null or a Kubernetes namespace name"),
        ({"app_namespace": ""}, "app_namespace must be null or a Kubernetes namespace name"),
        ({"role": "agent"}, "local_api must be null on an agent"),
        ({"role": "agent", "local_api": None}, "etcd_s3_dropin must be null on an agent"),
        (
            {"role": "agent", "local_api": None, "etcd_s3_dropin": None, "first": True},
            "first must be false on an agent",
        ),
    ],
)
def test_bad_config_is_refused(node, pki, change, expected):
    path = node.root / "config.json"
    if isinstance(change, dict):
        node.configure(["https://10.0.1.3:6443"], local_api="https://127.0.0.1:6443")
        config = json.loads(node.config_file.read_text())
        node.config_file.write_text(json.dumps({**config, **change}))
        path = node.config_file
    elif change is not None:
        path.write_text(change)

    result = node.run(pki.secrets(), config=path)

    assert result.returncode == 2
    assert result.stdout == b""
    [line] = err_lines(result)
    assert line.startswith(f"k3s-node-ready: configuration {path}: {expected}")
    assert node.nothing_written()
    assert node.systemctl_calls() == []


@pytest.mark.parametrize(
    "args", [["--bogus"], ["extra"], ["--config"], ["--config="], ["--cluster", "--drain"]]
)
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
    assert err_lines(result) == ["usage: k3s-node-ready [--config PATH] [--cluster | --drain]"]
