"""`blueprints promote/watch/park` as a CI job runs them: a real process, the real HTTP probe,
the fake Hetzner API on 127.0.0.1, and the app's health endpoints on loopback addresses."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from fakes import FakeHcloud

ROOT = Path(__file__).resolve().parent.parent
STACK = "single-vm-hcloud"
ADDRESSES = {"primary": "127.0.0.2", "spare": "127.0.0.3", "fip": "127.0.0.4"}


class World:
    def __init__(self, fake: FakeHcloud, project: Path, port: int):
        self.fake = fake
        self.project = project
        self.port = port
        self.dead: set[str] = set()
        base = {"app": "shop", "blueprint": "single-vm", "stack": STACK}
        self.ids = {
            "primary": fake.add_server(
                "p", labels={**base, "node": "primary"}, ipv4=ADDRESSES["primary"]
            ),
            "spare": fake.add_server(
                "s", labels={**base, "node": "spare"}, status="off", ipv4=ADDRESSES["spare"]
            ),
        }
        self.volume = fake.add_volume("d", labels=base, server=self.ids["primary"])
        fake.add_floating_ip("ip", labels=base, server=self.ids["primary"], ip=ADDRESSES["fip"])

    def node_at(self, address: str) -> str | None:
        state = self.fake.state()
        by_id = {v: k for k, v in self.ids.items()}
        if address == ADDRESSES["fip"]:
            server = next(iter(state["floating_ips"].values()))["server"]
            return by_id.get(server)
        return next((n for n, a in ADDRESSES.items() if a == address), None)

    def healthy(self, address: str) -> bool:
        """The app answers where its node runs and holds the volume."""
        node = self.node_at(address)
        if node is None or node in self.dead:
            return False
        state = self.fake.state()
        server = state["servers"][self.ids[node]]
        volume = state["volumes"][self.volume]
        return server["status"] == "running" and volume["server"] == self.ids[node]

    def run(self, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
        env = {
            "PATH": "/usr/bin:/bin",
            "HCLOUD_TOKEN": "test-token",
            "HCLOUD_ENDPOINT": self.fake.url,
            "COLUMNS": "200",
        }
        return subprocess.run(
            [sys.executable, "-m", "blueprints.cli", *args, "-C", str(self.project)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )

    def active_in_file(self) -> str:
        data = yaml.safe_load((self.project / f"stacks/Pulumi.{STACK}.yaml").read_text())
        return data["config"]["blueprints:active"]


def _health_servers(world: World) -> list[http.server.ThreadingHTTPServer]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.path == "/healthz" and world.healthy(self.server.server_address[0])
            self.send_response(200 if ok else 503)
            self.end_headers()

        def log_message(self, *_args):
            pass

    servers = []
    for address in ADDRESSES.values():
        srv = http.server.ThreadingHTTPServer((address, world.port), Handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
    return servers


@pytest.fixture
def world(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "Pulumi.yaml", project)
    shutil.copytree(ROOT / "examples", project / "examples")
    (project / "stacks").mkdir()
    stack_file = project / f"stacks/Pulumi.{STACK}.yaml"
    shutil.copy(ROOT / "stacks" / stack_file.name, stack_file)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    text = stack_file.read_text() + (
        f"  blueprints:healthUrl: 'http://{{address}}:{port}{{path}}'\n"
        "  blueprints:watchInterval: 1\n"
        "  blueprints:promoteTimeout: 20\n"
        "  blueprints:probeTimeout: 1\n"
    )
    stack_file.write_text(text)
    with FakeHcloud(action_polls=1) as fake:
        w = World(fake, project, port)
        servers = _health_servers(w)
        try:
            yield w
        finally:
            for srv in servers:
                srv.shutdown()
                srv.server_close()


def test_promote_end_to_end(world):
    world.dead.add("primary")
    received = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_args):
            pass

    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{hook.server_address[1]}/hook"
        res = world.run("promote", STACK, "--notify", url)
    finally:
        hook.shutdown()
        hook.server_close()
    assert res.returncode == 0, res.stderr
    assert "promoted spare (boot, fence, detach, attach, healthy, address, record)" in res.stdout
    assert world.active_in_file() == "spare"
    state = world.fake.state()
    assert state["volumes"][world.volume]["server"] == world.ids["spare"]
    assert state["servers"][world.ids["primary"]]["status"] == "off"
    assert world.healthy(ADDRESSES["fip"])
    assert "pulumi up --refresh --stack single-vm-hcloud" in res.stdout
    assert len(received) == 1 and received[0]["stack"] == STACK
    assert received[0]["text"].startswith("single-vm-hcloud: promoted spare")


def test_promote_refuses_while_the_app_is_healthy(world):
    res = world.run("promote", STACK)
    assert res.returncode == 3
    assert res.stderr.startswith("refused: the app is healthy on primary at 127.0.0.4")
    assert world.active_in_file() == "primary"


def test_promote_refuses_a_running_promotion(world):
    import time

    world.dead.add("primary")
    labels = {"app": "shop", "blueprint": "single-vm", "stack": STACK}
    labels["blueprints-promotion"] = f"spare.{int(time.time())}.ci-runner-7"
    world.fake.client().volumes.get_by_id(world.volume).update(labels=labels)
    res = world.run("promote", STACK)
    assert res.returncode == 3
    assert "another promotion to spare is in progress (by ci-runner-7" in res.stderr
    res = world.run("promote", STACK, "--takeover")
    assert res.returncode == 0, res.stderr
    assert world.active_in_file() == "spare"


def test_watch_bounded_on_a_healthy_app(world):
    res = world.run("watch", STACK, "--for", "3s")
    assert res.returncode == 0, res.stderr
    assert "no promotion" in res.stdout
    assert world.active_in_file() == "primary"


def test_watch_promotes_a_dead_primary(world):
    world.dead.add("primary")
    res = world.run("watch", STACK, "--for", "60s")
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("no healthy answer") == 3
    assert "promoted spare" in res.stdout
    assert world.active_in_file() == "spare"


def test_park(world):
    res = world.run("park", STACK)
    assert res.returncode == 0, res.stderr
    assert "spare is already parked (off)" in res.stdout
    world.fake.set_status(world.ids["spare"], "running")
    assert world.run("park", STACK).stdout.strip() == "spare parked (powered off)"


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("promote", STACK, "--to", "tertiary"), {}, "error: --to: must be primary or spare"),
        (("watch", STACK, "--for", "soon"), {}, "error: --for: 'soon' is not a duration"),
        (("promote", STACK), {"HCLOUD_TOKEN": ""}, "error: HCLOUD_TOKEN is not set"),
        (("promote", "single-vm-gcp"), {}, "error: unknown stack 'single-vm-gcp'"),
    ],
)
def test_bad_input(world, args, env, message):
    base = {"PATH": "/usr/bin:/bin", "HCLOUD_TOKEN": "t", "HCLOUD_ENDPOINT": world.fake.url}
    res = subprocess.run(
        [sys.executable, "-m", "blueprints.cli", *args, "-C", str(world.project)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, **env},
    )
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith(message), res.stderr
    assert "Traceback" not in res.stderr


def test_api_unreachable_fails_with_exit_1(world):
    env = {**os.environ, "HCLOUD_TOKEN": "t", "HCLOUD_ENDPOINT": "http://127.0.0.1:9/v1"}
    res = subprocess.run(
        [sys.executable, "-m", "blueprints.cli", "park", STACK, "-C", str(world.project)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert res.returncode == 1
    assert res.stderr.startswith("failed: ")
    assert "Traceback" not in res.stderr
