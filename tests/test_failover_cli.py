"""`blueprints promote/watch/park/watchdog-unit` as a CI job or a service runs them: a real
process, the real HTTP probe, the fake Hetzner API on 127.0.0.1, and the app's health endpoints
on loopback addresses.

Loopback cannot make a host silent (every 127.x address answers TCP, if only with a refusal,
which is an answer from a live host), so the watchdog's host checks see a *dead* host through
one seam: processes started with `World.run(..., dead_hosts=...)` load
blueprints.failover.hostcheck with `tcp_answers` answering "no answer" for the addresses listed
in a file the test rewrites. A second seam: every 127.x address is an address of this machine,
as the floating IP is on Hetzner's warm spare; the addresses in $REMOTE_ADDRESSES (by default
all of them) are treated as another machine's, as they are for a watcher elsewhere. Everything
else (the probe, the cloud reads, the promotion, the record) is the real code against the fake
API.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from fakes import FakeHcloud

ROOT = Path(__file__).resolve().parent.parent
STACK = "single-vm-hcloud"
ADDRESSES = {"primary": "127.0.0.2", "spare": "127.0.0.3", "fip": "127.0.0.4"}

# The CLI with hostcheck.tcp_answers saying "no answer" for the addresses in $DEAD_HOSTS_FILE.
LAUNCH = """
import os, sys
from pathlib import Path
from blueprints.failover import hostcheck
real = hostcheck.tcp_answers
def tcp(address, port, timeout):
    dead = Path(os.environ["DEAD_HOSTS_FILE"]).read_text().split()
    if address in dead:
        return False, f"no answer on TCP {port} within {timeout:g}s"
    return real(address, port, timeout)
hostcheck.tcp_answers = tcp
from blueprints.failover import health
real_local = health.is_local_address
remote = os.environ.get("REMOTE_ADDRESSES", "").split()
health.is_local_address = lambda address: address not in remote and real_local(address)
from blueprints.cli import main
sys.argv[0] = "blueprints"
main()
"""


class World:
    def __init__(self, fake: FakeHcloud, project: Path, port: int):
        self.fake = fake
        self.project = project
        self.port = port
        self.dead: set[str] = set()
        self.dead_hosts = project.parent / "dead-hosts"
        self.dead_hosts.write_text("")
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

    def kill(self, node: str) -> None:
        """The node's host dies: its app, its TCP answers and (the cloud sees it) its power."""
        self.dead.add(node)
        self.fake.set_status(self.ids[node], "off")
        self.dead_hosts.write_text(f"{ADDRESSES[node]}\n{ADDRESSES['fip']}\n")

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "PATH": "/usr/bin:/bin",
            "HCLOUD_TOKEN": "test-token",
            "HCLOUD_ENDPOINT": self.fake.url,
            "COLUMNS": "200",
            "DEAD_HOSTS_FILE": str(self.dead_hosts),
            "REMOTE_ADDRESSES": " ".join(ADDRESSES.values()),
            **extra,
        }

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-c", LAUNCH, *args, "-C", str(self.project)]

    def run(self, *args: str, timeout: int = 120, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.argv(*args), capture_output=True, text=True, timeout=timeout, env=self.env(**env)
        )

    def active_in_file(self) -> str:
        data = yaml.safe_load(self.stack_file.read_text())
        return data["config"]["blueprints:active"]

    @property
    def stack_file(self) -> Path:
        return self.project / f"stacks/Pulumi.{STACK}.yaml"

    def configure(self, **settings: object) -> None:
        """Add blueprints:<key>: <value> lines to the stack file (keys it does not set yet)."""
        text = self.stack_file.read_text()
        for key, value in settings.items():
            text += f"  blueprints:{key}: {value}\n"
        self.stack_file.write_text(text)


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


class Hook:
    """A webhook receiver: what --notify POSTed, in order."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        received = self.received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.close()


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
        "  blueprints:probeTimeout: 1\n"
    )
    stack_file.write_text(text)
    with FakeHcloud(action_polls=1) as fake:
        w = World(fake, project, port)
        servers = _health_servers(w)
        try:
            yield w
        finally:
            stopping = [threading.Thread(target=srv.shutdown) for srv in servers]
            for t in stopping:
                t.start()
            for t in stopping:
                t.join()
            for srv in servers:
                srv.server_close()


def test_promote_end_to_end(world, hook):
    world.configure(promoteTimeout=20)
    world.dead.add("primary")
    res = world.run("promote", STACK, "--notify", hook.url)
    assert res.returncode == 0, res.stderr
    assert "promoted spare (boot, fence, detach, attach, healthy, address, record)" in res.stdout
    assert world.active_in_file() == "spare"
    state = world.fake.state()
    assert state["volumes"][world.volume]["server"] == world.ids["spare"]
    assert state["servers"][world.ids["primary"]]["status"] == "off"
    assert world.healthy(ADDRESSES["fip"])
    assert "commit it (until then every plan of single-vm-hcloud warns" in res.stdout
    assert len(hook.received) == 1 and hook.received[0]["stack"] == STACK
    assert hook.received[0]["event"] == "promoted"
    assert hook.received[0]["text"].startswith("single-vm-hcloud: promoted spare")


def test_promote_notify_from_the_environment(world, hook):
    """BLUEPRINTS_NOTIFY stands in for --notify (the watchdog unit's env file sets it)."""
    world.dead.add("primary")
    res = world.run("promote", STACK, BLUEPRINTS_NOTIFY=hook.url)
    assert res.returncode == 0, res.stderr
    assert [r["event"] for r in hook.received] == ["promoted"]


def test_promote_refuses_while_the_app_is_healthy(world):
    res = world.run("promote", STACK)
    assert res.returncode == 3
    assert res.stderr.startswith("refused: the app is healthy on primary at 127.0.0.4")
    assert world.active_in_file() == "primary"


def test_promote_refuses_a_running_promotion(world):
    from blueprints.failover.hcloud_cloud import HcloudCloud
    from blueprints.failover.lock import LockRecord

    world.dead.add("primary")
    cloud = HcloudCloud(world.fake.client(), "shop", STACK)
    cloud.create_lock(LockRecord("spare", "ci-runner-7-0123456789ab", int(world.fake.now())))
    res = world.run("promote", STACK)
    assert res.returncode == 3, res.stderr
    assert "another promotion to spare is in progress (by ci-runner-7-0123456789ab" in res.stderr
    res = world.run("promote", STACK, "--takeover")
    assert res.returncode == 0, res.stderr
    assert world.active_in_file() == "spare"


def test_watch_bounded_on_a_healthy_app(world):
    res = world.run("watch", STACK, "--for", "3s")
    assert res.returncode == 0, res.stderr
    assert "no promotion" in res.stdout
    # One line per state change: the header and the first look at the cloud, no per-probe line.
    assert len(res.stderr.splitlines()) == 2, res.stderr
    assert world.active_in_file() == "primary"
    assert world.fake.requests.count(("GET", "/v1/servers")) <= 1  # no cloud read per probe


def _failing_pulumi(directory: Path) -> str:
    """A `pulumi` on PATH that fails as the Automation API does under the watchdog unit's
    ProtectHome=read-only; returns the PATH to use."""
    directory.mkdir()
    exe = directory / "pulumi"
    exe.write_text("#!/bin/sh\necho 'read-only file system: ~/.pulumi' >&2\nexit 1\n")
    exe.chmod(0o755)
    return f"{directory}:/usr/bin:/bin"


def test_watch_promotes_when_the_host_is_dead(world, hook, tmp_path):
    world.kill("primary")
    path = _failing_pulumi(tmp_path / "bin")
    res = world.run("watch", STACK, "--for", "8s", "--notify", hook.url, PATH=path)
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("no healthy answer") == 1  # a state change, not one per probe
    # the public address and the floating IP are one path; the cloud says off
    assert "host primary is unreachable (2 of 2 paths unreachable" in res.stderr
    assert "promoted spare" in res.stdout
    # recorded in the stack file, never through the Pulumi CLI (the unit cannot run it)
    assert "recorded blueprints:active: spare in stacks/Pulumi.single-vm-hcloud.yaml" in res.stdout
    assert "watching the app on spare now" in res.stderr
    assert world.active_in_file() == "spare"
    events = [r["event"] for r in hook.received]
    assert events == ["promoted", "recovered"]


def test_watch_on_the_machine_holding_the_floating_ip(world):
    """On Hetzner's warm spare the floating IP is an address of the spare itself (eth0): the
    watchdog probes the holder's own address instead, and leaves the floating IP out of the
    host check (here 127.0.0.4 binds locally, standing in for it)."""
    world.configure(promoteTimeout=20)
    world.kill("primary")
    res = world.run("watch", STACK, "--for", "8s", REMOTE_ADDRESSES="")
    assert res.returncode == 0, res.stderr
    assert (
        "watching the app at 127.0.0.2, the own address of primary (the floating IP 127.0.0.4 "
        "is an address of this machine" in res.stderr
    )
    assert "app: no healthy answer at 127.0.0.2" in res.stderr
    line = next(x for x in res.stderr.splitlines() if x.startswith("host primary is unreachable"))
    assert "2 of 2 paths unreachable: public address 127.0.0.2:" in line
    assert "floating IP" not in line
    assert "promoted spare" in res.stdout
    assert "recovered: the app answers at 127.0.0.3 again" in res.stderr


def test_watch_alerts_when_the_app_fails_on_a_live_host(world, hook):
    """The app fails, its host answers (TCP on the public address and the floating IP, cloud
    status running): an alert, once, with exit status 4; nothing is moved."""
    world.dead.add("primary")
    res = world.run("watch", STACK, "--for", "6s", "--notify", hook.url)
    assert res.returncode == 4, res.stderr
    alerts = [line for line in res.stderr.splitlines() if line.startswith("alert:")]
    assert len(alerts) == 1, res.stderr
    assert "primary's host answers (0 of 2 paths unreachable" in alerts[0]
    assert "promot" not in res.stdout.replace("no promotion", "")
    assert "1 alert(s)" in res.stdout
    assert [r["event"] for r in hook.received] == ["alert"]
    assert hook.received[0]["text"].startswith(f"{STACK}: alert: the app fails at 127.0.0.4")
    state = world.fake.state()
    assert state["volumes"][world.volume]["server"] == world.ids["primary"]
    assert world.active_in_file() == "primary"


def test_watch_follows_the_cloud_not_a_stale_stack_file(world):
    """The cloud runs the app on the spare, the stack file still says primary (a promotion
    nobody committed); the spare's host dies: the watchdog promotes back to primary."""
    world.fake.set_status(world.ids["spare"], "running")
    world.fake.set_status(world.ids["primary"], "off")
    client = world.fake.client()
    volume = client.volumes.get_by_id(world.volume)
    volume.detach().wait_until_finished()
    client.volumes.get_by_id(world.volume).attach(
        client.servers.get_by_id(world.ids["spare"])
    ).wait_until_finished()
    fip = client.floating_ips.get_all()[0]
    fip.assign(client.servers.get_by_id(world.ids["spare"])).wait_until_finished()
    assert world.active_in_file() == "primary"
    world.configure(promoteTimeout=20)
    world.kill("spare")
    res = world.run("watch", STACK, "--for", "8s")
    assert "the stack file says primary is active, the cloud says spare" in res.stderr
    assert "host spare is unreachable" in res.stderr
    assert res.returncode == 0, res.stderr
    assert "promoted primary" in res.stdout
    assert world.active_in_file() == "primary"


def test_watch_runs_on_after_a_promotion(world):
    """Without --for the watchdog is a service: after promoting it watches the new active
    node, here alerting when the spare's app fails on its live host."""
    world.configure(promoteTimeout=20)
    proc = subprocess.Popen(
        world.argv("watch", STACK), stderr=subprocess.PIPE, text=True, env=world.env()
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()

    def wait_for(text: str, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while not any(text in line for line in list(lines)):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < end, f"no {text!r} in:\n" + "".join(lines)
            time.sleep(0.2)

    try:
        wait_for("watching the app at 127.0.0.4")
        world.kill("primary")
        wait_for("watching the app on spare now")
        wait_for("recovered: the app answers at 127.0.0.4 again")
        assert world.active_in_file() == "spare"
        world.dead_hosts.write_text("")
        world.dead.add("spare")
        wait_for("alert: the app fails at 127.0.0.4")
        assert proc.poll() is None  # still watching
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    alert = next(line for line in lines if line.startswith("alert:"))
    assert "spare's host answers" in alert


def test_park(world):
    res = world.run("park", STACK)
    assert res.returncode == 0, res.stderr
    assert "spare is already parked (off)" in res.stdout
    world.fake.set_status(world.ids["spare"], "running")
    assert world.run("park", STACK).stdout.strip() == "spare parked (powered off)"


def test_a_token_with_a_trailing_carriage_return_works(world):
    """HCLOUD_TOKEN from an env file written on Windows ends in \\r: stripped, it works."""
    res = world.run("park", STACK, HCLOUD_TOKEN="test-token\r")
    assert res.returncode == 0, res.stderr
    assert "spare is already parked (off)" in res.stdout


@pytest.mark.parametrize(("dead", "target"), [("primary", "spare"), ("spare", "primary")])
def test_the_watchdog_promotes_away_from_the_node_it_judged_dead(monkeypatch, dead, target):
    from blueprints import cli

    calls = []
    monkeypatch.setattr(cli, "_promote_once", lambda session, **kw: calls.append(kw))
    cli._promote_away(object(), dead)
    assert calls == [{"target": target}]


def test_a_taken_over_run_says_stopped_not_refused(capsys):
    """ "refused" promises that nothing changed; a run stopped by a takeover may have changed
    something: it says "stopped" (exit 3 all the same)."""
    import typer

    from blueprints import cli
    from blueprints.failover.promote import PromotionTakenOver

    @cli._failover_errors
    def command():
        raise PromotionTakenOver(
            "the promotion lock was taken over by ci-2; this run stopped before fence. "
            "Done so far: boot"
        )

    with pytest.raises(typer.Exit) as exc:
        command()
    assert exc.value.exit_code == 3
    err = capsys.readouterr().err
    assert err.startswith("stopped: the promotion lock was taken over by ci-2"), err
    assert "refused" not in err


def test_a_promotion_stopped_by_the_hard_deadline_marks_its_lock_failed(world, monkeypatch):
    """The recording hangs (a stuck file system); the hard deadline stops the run where it
    is, and the lock is marked failed so that a rerun resumes at once."""
    from blueprints import cli
    from blueprints.failover import session as session_module
    from blueprints.failover.hcloud_cloud import HcloudCloud
    from blueprints.failover.session import DeadlineExceeded, open_session

    world.dead.add("primary")
    cloud = HcloudCloud(world.fake.client(), "shop", STACK)
    session = open_session(world.project, STACK, cloud=cloud)
    session.record = lambda _node: time.sleep(60)
    monkeypatch.setattr(session_module, "promote_budget", lambda _s: 20.0)
    monkeypatch.setattr(session_module, "grace", lambda _s: -15.0)  # the deadline: 5 s
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as exc:
        cli._promote_once(session)
    assert time.monotonic() - started < 5 + 3
    assert str(exc.value) == (
        "the promotion did not finish within its budget of 20s (promoteTimeout + 20 x "
        "apiTimeout) and was stopped; its lock is marked failed, so a rerun resumes at once; "
        "rerun promote to finish it"
    )
    stored = cloud.read_lock()
    assert (stored.record.state, stored.record.target) == ("failed", "spare")


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


BAD_HEALTH_URLS = [
    "https://{host}{path}",
    "https://{domain}{path!r}",
    "ftp://{domain}{path}",
    "https://status.example.org{path}",
    "https://{domain",
]


@pytest.mark.parametrize("command", ["watch", "promote", "park"])
@pytest.mark.parametrize("url", BAD_HEALTH_URLS)
def test_bad_health_url_is_refused_when_the_stack_is_read(world, command, url):
    text = world.stack_file.read_text()
    old = next(line for line in text.splitlines() if "blueprints:healthUrl" in line)
    world.stack_file.write_text(text.replace(old, f"  blueprints:healthUrl: '{url}'"))
    world.fake.clear_requests()
    args = (command, STACK, "--for", "5s") if command == "watch" else (command, STACK)
    res = world.run(*args)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(
        f"error: stacks/Pulumi.{STACK}.yaml: blueprints:healthUrl: must be an http or https URL "
        "whose host is {address} or {domain}"
    )
    assert world.fake.requests == []  # nothing was asked of the cloud


def test_api_unreachable_fails_with_exit_1(world):
    world.configure(apiTimeout=1)  # park's budget: 10 x apiTimeout
    env = {**os.environ, "HCLOUD_TOKEN": "t", "HCLOUD_ENDPOINT": "http://127.0.0.1:9/v1"}
    res = subprocess.run(
        [sys.executable, "-m", "blueprints.cli", "park", STACK, "-C", str(world.project)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert res.returncode == 1
    # (retries are logged on the way; the last line says why it gave up)
    assert res.stderr.rstrip().splitlines()[-1].startswith("failed: ")
    assert "Traceback" not in res.stderr


# -- bounded against a silent API ----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "budget"),
    [
        # --for 5s, then at most one cloud read (apiTimeout 1) more
        (("watch", STACK, "--for", "5s"), 5 + 1),
        # promoteTimeout 10 + 20 x apiTimeout 1, and the grace of apiTimeout + 5
        (("promote", STACK), 10 + 20 + 6),
        # 10 x apiTimeout 1, and the grace
        (("park", STACK), 10 + 6),
    ],
    ids=["watch", "promote", "park"],
)
def test_every_command_is_bounded_against_a_silent_api(world, args, budget):
    """The API accepts every connection and never answers: each command ends within its
    budget (plus 3 s for starting Python), exit 1, with one sentence and no traceback."""
    world.configure(apiTimeout=1, promoteTimeout=10)
    world.dead.add("primary")
    world.fake.silence()
    started = time.monotonic()
    res = world.run(*args, timeout=budget + 30)
    took = time.monotonic() - started
    world.fake.silence(False)
    assert res.returncode == 1, res.stderr
    assert took <= budget + 3, f"{args[0]} took {took:.1f}s, budget {budget}s"
    assert "Traceback" not in res.stderr
    failed = [line for line in res.stderr.splitlines() if line.startswith("failed:")]
    assert len(failed) == 1, res.stderr
    assert res.stderr.rstrip().splitlines()[-1] == failed[0]


# -- the watchdog as a service -------------------------------------------------------------


def test_watchdog_unit(world, tmp_path):
    res = world.run("watchdog-unit", STACK)
    assert res.returncode == 0, res.stderr
    unit = res.stdout
    project = str(world.project.resolve())
    assert f"ExecStart={project}/.venv/bin/blueprints watch {STACK} -C {project}\n" in unit
    assert "Restart=always\n" in unit
    assert "User=blueprints\n" in unit
    assert f"EnvironmentFile=/etc/blueprints-watch/{STACK}.env\n" in unit
    assert f"ReadWritePaths={project}/stacks\n" in unit
    assert "HCLOUD_TOKEN" in unit and "--for" not in unit
    assert world.run("watchdog-unit", STACK).stdout == unit  # same input, same bytes
    other = world.run(
        "watchdog-unit", STACK, "--user", "watch", "--env-file", "/etc/w.env", "--command", "/x/b"
    ).stdout
    assert "User=watch\n" in other and "EnvironmentFile=/etc/w.env\n" in other
    assert f"ExecStart=/x/b watch {STACK}" in other


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--user", "root"), "error: --user: run the watchdog as an unprivileged account"),
        (("--env-file", "/etc/my env"), "error: --env-file: '/etc/my env' cannot be written"),
        (("--command", "bin/blueprints"), "error: --command: must be an absolute path"),
    ],
)
def test_watchdog_unit_bad_input(world, args, message):
    res = world.run("watchdog-unit", STACK, *args)
    assert res.returncode == 2
    assert res.stderr.startswith(message), res.stderr
    assert "Traceback" not in res.stderr


def test_watchdog_unit_passes_systemd_analyze_verify(world, tmp_path):
    from validators import require

    exe = require("systemd-analyze")  # a missing validator fails, as everywhere in the suite
    command = tmp_path / "bin/blueprints"
    command.parent.mkdir()
    command.write_text("#!/bin/sh\nexit 0\n")
    command.chmod(0o755)
    res = world.run("watchdog-unit", STACK, "--command", str(command))
    assert res.returncode == 0, res.stderr
    unit = tmp_path / f"blueprints-watch-{STACK}.service"
    unit.write_text(res.stdout)
    env = {**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""}
    proc = subprocess.run(
        [exe, "verify", "--man=no", str(unit)], capture_output=True, text=True, env=env
    )
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and not out, out
