"""The spec's files, tasks, schedules and shared volumes, run for real (tests/realnode): the
single-vm blueprint's node, booted from its plan's bootstrap, gets releases over the real release
channel (ssh as `deploy`, the release document on stdin, as test_realnode_release.py does).

The app is the example with a few of the new fields (see `app`): web (1 replica) and worker
share the volume `shared` (web serves it under /shared/, worker writes into it); web gets a
config file (0440, interpolated) and a secret file (0400, a secret's value); a task `migrate`
runs with worker's definition and appends `task <marker>` to shared/events.log, into which every
web and worker container also writes `start <hostname>` as it starts (the stand-in images do,
see tests/realnode/images.py), so the file's order is the order of what happened; a schedule
`tick` appends a timestamp to shared/schedule.log every minute.

- release A (the first): the files in web's container, byte for byte, with their modes, read
  only; the task ran once, after the services it needs (worker depends on postgres and redis)
  started and before web's and worker's containers did;
- release B (worker's env changes): the task ran once more, before worker's new container;
- worker writes a file, web serves it through Caddy;
- release C: its second task fails: the command exits 1 naming it, the node stays on B, nothing
  restarted, zero failed requests through Caddy meanwhile;
- release D: its task outlives its timeout (2 s): the same, and no task container is left
  running;
- the schedule fired within 75 s of release A going live.
"""

from __future__ import annotations

import re
import secrets
import time

import pytest

from tests.realnode.host import wait_for
from tests.realnode.node import TIMINGS
from tests.realnode.release import ReleaseChannel, Resolver, Traffic, example_app, release_of
from tests.realnode.stacks import booted_stack_node

STACK = "single-vm-hcloud"
TOKEN = f"tok-{secrets.token_hex(12)}"
SETTINGS = (
    "# shop settings (blueprints real-node test)\n"
    "[database]\n"
    "address = ${services.postgres.host}:${services.postgres.port}\n"
    "literal = $${not.a.reference}\n"
    "last line without a newline"
)
SETTINGS_IN_CONTAINER = (
    "# shop settings (blueprints real-node test)\n"
    "[database]\n"
    "address = postgres:5432\n"
    "literal = ${not.a.reference}\n"
    "last line without a newline"
)
SETTINGS_PATH = "/etc/shop/settings.ini"
TOKEN_PATH = "/run/secrets/api_token"
EVENTS = "/srv/data/shared/events.log"  # on the node; /shared in worker, /www/shared in web
TICKS = "/srv/data/shared/schedule.log"
SCHEDULE_WAIT = 75
# A service's step in the agent's output, but its pull (the summary lines are indented further).
SERVICE_STEP = re.compile(r"^\[\s*[\d.]+s\] (web|worker|postgres|redis): (?!pulling)")


def _task(line: str, then: str = "", timeout: str = "1m") -> dict:
    """A task run with worker's definition that appends `line` (the shell expands
    $RELEASE_MARKER, worker's env) to the shared events file, then runs `then`."""
    script = f'echo "{line}" >> /shared/events.log' + (f"; {then}" if then else "")
    return {"service": "worker", "command": ["sh", "-c", script], "timeout": timeout}


def app(marker: str, tasks: dict | None = None, web_marker: str | None = None) -> dict:
    """The example app with files, a shared volume, tasks and a schedule; `marker` is worker's
    RELEASE_MARKER (changing it changes worker's definition), `web_marker` web's."""
    spec = example_app()
    spec["volumes"]["shared"] = {"size_gb": 1}
    web, worker = spec["services"]["web"], spec["services"]["worker"]
    web["replicas"] = 1  # a service with a volume runs one replica
    web["volumes"] = [{"volume": "shared", "path": "/www/shared"}]
    web["env"]["STANDIN_START_LOG"] = "/www/shared/events.log"
    if web_marker is not None:
        web["env"]["RELEASE_MARKER"] = web_marker
    web["files"] = [
        {"path": SETTINGS_PATH, "content": SETTINGS, "mode": "0440"},
        {"path": TOKEN_PATH, "content": "${secrets.API_TOKEN}", "mode": "0400"},
    ]
    worker["volumes"] = [{"volume": "shared", "path": "/shared"}]
    worker["env"]["STANDIN_START_LOG"] = "/shared/events.log"
    worker["env"]["RELEASE_MARKER"] = marker
    spec["tasks"] = tasks if tasks is not None else {"migrate": _task("task $RELEASE_MARKER")}
    spec["schedules"] = {
        "tick": {
            "service": "worker",
            "command": ["sh", "-c", 'echo "$(date +%s) $RELEASE_MARKER" >> /shared/schedule.log'],
            "cron": "* * * * *",
            "timeout": "30s",
        }
    }
    return spec


def _bootstrapped(node) -> None:
    node.wait_active(["bpt-first-boot.service", "ssh.service", "srv-data.mount"], timeout=240)


class Live:
    def __init__(self, sn, channel: ReleaseChannel):
        self.sn, self.channel, self.node = sn, channel, sn.node
        self.ids: dict[str, str] = {}
        self.outputs: dict[str, str] = {}
        self.live_at: dict[str, float] = {}  # wall clock (the containers' `date` reads it too)

    def deploy(self, spec: dict, what: str, expect: int = 0, traffic: bool = False):
        """Deliver `spec`'s release; (process, seconds, Traffic or None)."""
        docs = self.channel.documents(spec)
        self.ids[what] = release_of(docs.release)
        started = time.monotonic()
        if traffic:
            with Traffic(self.sn.client()) as load:
                proc = self.channel.deploy(docs)
                seconds = time.monotonic() - started
                time.sleep(1)  # a last answer or two after the command returned
        else:
            load = None
            proc = self.channel.deploy(docs)
            seconds = time.monotonic() - started
        self.live_at[what] = time.time()
        self.outputs[what] = proc.stdout
        summary = f": {load.summary()}" if load else ""
        print(f"\n--- release {what} ({seconds:.1f} s){summary}\n{proc.stdout}{proc.stderr}")
        assert proc.returncode == expect, (
            f"release {what}: exit {proc.returncode}, expected {expect}\n"
            f"{proc.stdout}{proc.stderr}\n{self.node.diagnose()}"
        )
        return proc, seconds, load

    def events(self) -> list[str]:
        return self.node.read(EVENTS).splitlines()

    def container(self, name: str) -> dict:
        return self.node.containers()[name]

    def docker_exec(self, container: str, *argv: str, check: bool = True):
        return self.node.exec(["docker", "exec", container, *argv], check=check)


@pytest.fixture(scope="module")
def live():
    with (
        booted_stack_node(STACK, "-primary", _bootstrapped, "single-vm spec fields") as sn,
        Resolver(sn.network) as resolver,
    ):
        resolver.serve(sn.node)
        channel = ReleaseChannel(sn)
        channel.authorize()
        channel.secret_values = {**channel.secret_values, "API_TOKEN": TOKEN}
        live = Live(sn, channel)
        live.deploy(app("A"), "A")
        client = sn.client()
        wait_for("HTTPS through Caddy", lambda: client.get("/", 3).status == 200, 90, 0.5)
        yield live


def _steps(output: str) -> list[tuple[float, str]]:
    """The agent's progress lines: (seconds since its start, message)."""
    found = []
    for line in output.splitlines():
        m = re.match(r"^\[\s*([\d.]+)s\] (.*)$", line)
        if m:
            found.append((float(m.group(1)), m.group(2)))
    return found


def _first(lines: list[str], pattern: str) -> int:
    return next(i for i, line in enumerate(lines) if re.search(pattern, line))


def test_files_are_in_the_container_read_only_with_their_modes(live):
    node = live.node
    shown = live.docker_exec("web-1", "cat", SETTINGS_PATH).stdout
    assert shown == SETTINGS_IN_CONTAINER
    stat = live.docker_exec("web-1", "stat", "-c", "%a %u %s", SETTINGS_PATH).stdout.split()
    assert stat == ["440", "0", str(len(SETTINGS_IN_CONTAINER.encode()))]
    # Bind-mounted read-only: not even root in the container can change it.
    wrote = live.docker_exec("web-1", "sh", "-c", f"echo x >> {SETTINGS_PATH}", check=False)
    assert wrote.returncode != 0
    assert node.exec(["docker", "exec", "web-1", "cat", SETTINGS_PATH]).stdout == shown

    # The secret file holds the secret's value; the release document never does.
    assert live.docker_exec("web-1", "cat", TOKEN_PATH).stdout == TOKEN
    assert live.docker_exec("web-1", "stat", "-c", "%a", TOKEN_PATH).stdout.strip() == "400"
    docs = live.channel.documents(app("A"))
    assert TOKEN not in docs.release
    assert TOKEN in (docs.secrets or "")

    # On the node: a release file and a root-only secret file, with the modes declared.
    from blueprints.spec import parse_spec

    settings, token = parse_spec(app("A")).services["web"].files
    modes = node.sh(
        f"stat -c '%a %n' /etc/blueprints/files/web/{settings.key} "
        f"/etc/blueprints/secrets/files/web/{token.key} /etc/blueprints/secrets"
    ).split("\n")
    assert modes[:3] == [
        f"440 /etc/blueprints/files/web/{settings.key}",
        f"400 /etc/blueprints/secrets/files/web/{token.key}",
        "700 /etc/blueprints/secrets",
    ]


def test_a_task_runs_once_before_the_release_starts_its_containers(live):
    node = live.node
    # Release A was the first: the task's line precedes every container's start.
    events = live.events()
    web, worker = live.container("web-1"), live.container("worker-1")
    starts = sorted(f"start {c['id'][:12]}" for c in (web, worker))
    assert events[0] == "task A", events
    assert sorted(events[1:]) == starts, events
    # The agent's account agrees: the images pulled, the services the task needs (worker
    # depends on postgres and redis; new in this release) started, then the task, then web and
    # worker.
    out = live.outputs["A"].splitlines()
    task = _first(out, r"\] task migrate: done")
    assert _first(out, r"\] postgres: replica 1 of 1 healthy") < task, live.outputs["A"]
    assert _first(out, r"\] redis: replica 1 of 1 healthy") < task, live.outputs["A"]
    assert task < _first(out, r"\] (web|worker): (?!pulling)"), live.outputs["A"]

    # Release B changes worker's env: the task runs once more, with B's env, before worker's
    # new container starts; web (unchanged) is left alone.
    proc, seconds, _ = live.deploy(app("B"), "B")
    after = live.events()
    new_worker = live.container("worker-1")
    assert new_worker["id"] != worker["id"]
    assert live.container("web-1")["id"] == web["id"]
    assert after[: len(events)] == events
    assert after[len(events) :] == ["task B", f"start {new_worker['id'][:12]}"], after
    assert after.count("task A") == 1 and after.count("task B") == 1
    assert live.channel.current() == live.ids["B"]
    steps = _steps(proc.stdout)
    began = next(t for t, msg in steps if msg.startswith("task migrate: running"))
    done = next(t for t, msg in steps if msg.startswith("task migrate: done"))
    worker_at = next(t for t, msg in steps if msg.startswith("worker: ") and "pulling" not in msg)
    print(
        f"release B: task migrate from {began:.1f} s to {done:.1f} s, "
        f"worker's first step at {worker_at:.1f} s"
    )
    TIMINGS.append(("single-vm: a task (docker run --rm of worker's image)", done - began))
    assert began <= done <= worker_at
    TIMINGS.append(("single-vm: release B (a task, worker restarted): deploy", seconds))
    # The task's container is gone (docker run --rm): only the app's containers remain.
    running = {n for n, c in node.containers().items() if c["state"] == "running"}
    assert running == {"web-1", "worker-1", "postgres-1", "redis-1", "blueprints_caddy"}


def test_two_services_share_a_volume(live):
    # worker writes, web serves it (through Caddy, from its own mount of the same directory).
    note = f"written by worker {secrets.token_hex(4)}"
    live.docker_exec("worker-1", "sh", "-c", f"echo '{note}' > /shared/note.txt")
    client = live.sn.client()
    response = client.get("/shared/note.txt")
    assert response.status == 200, response.error
    assert response.body.strip() == note
    # Both containers mount the one directory on the data volume.
    assert live.node.read("/srv/data/shared/note.txt") == note + "\n"
    assert live.docker_exec("web-1", "cat", "/www/shared/note.txt").stdout == note + "\n"
    events = client.get("/shared/events.log")
    assert events.status == 200 and events.body.splitlines() == live.events()


def _unchanged(live, before: dict[str, dict]) -> None:
    now = live.node.containers()
    for name in ("web-1", "worker-1", "postgres-1", "redis-1"):
        assert now[name]["id"] == before[name]["id"], f"{name} was replaced"
        assert now[name]["state"] == "running"


def test_a_failing_task_stops_the_release_and_the_previous_one_keeps_serving(live):
    before = live.node.containers()
    events = live.events()
    tasks = {
        "migrate": _task("task $RELEASE_MARKER"),
        "check": _task(
            "check $RELEASE_MARKER", "echo 'error: relation shop_order missing' >&2; exit 3"
        ),
    }
    # web's env changes too: were the release not stopped, web would be restarted.
    proc, seconds, traffic = live.deploy(
        app("C", tasks, web_marker="C"), "C", expect=1, traffic=True
    )
    TIMINGS.append(
        (
            f"single-vm: release with a failing task -> stopped ({len(traffic.failed)} of "
            f"{len(traffic.answers)} requests failed)",
            seconds,
        )
    )
    assert re.search(rf"^release {live.ids['C']}: .*\bcheck\b", proc.stderr, re.M), proc.stderr
    assert live.ids["B"] in proc.stderr
    assert "relation shop_order missing" in proc.stdout + proc.stderr
    # The tasks ran in the order written, each once; then nothing else happened.
    assert live.events()[len(events) :] == ["task C", "check C"]
    assert live.channel.current() == live.ids["B"]
    _unchanged(live, before)
    assert traffic.failed == [], traffic.summary()
    assert len(traffic.answers) > 5
    assert not any(SERVICE_STEP.match(line) for line in proc.stdout.splitlines()), proc.stdout
    # web still runs B's definition (no RELEASE_MARKER of C in its env).
    env = live.docker_exec("web-1", "cat", "/run/standin.env").stdout
    assert "RELEASE_MARKER" not in env


def test_a_task_past_its_timeout_stops_the_release(live):
    before = live.node.containers()
    events = live.events()
    tasks = {"slow": _task("slow $RELEASE_MARKER", "sleep 300", timeout="2s")}
    proc, seconds, traffic = live.deploy(app("D", tasks), "D", expect=1, traffic=True)
    TIMINGS.append(
        (
            f"single-vm: release whose task times out (2 s) -> stopped ({len(traffic.failed)} "
            f"of {len(traffic.answers)} requests failed)",
            seconds,
        )
    )
    assert re.search(rf"^release {live.ids['D']}: .*\bslow\b", proc.stderr, re.M), proc.stderr
    assert seconds < 60
    assert live.events()[len(events) :] == ["slow D"]
    assert live.channel.current() == live.ids["B"]
    _unchanged(live, before)
    assert traffic.failed == [], traffic.summary()
    # The task's container did not outlive its timeout.
    wait_for(
        "only the app's containers to run",
        lambda: (
            {n for n, c in live.node.containers().items() if c["state"] == "running"}
            == {"web-1", "worker-1", "postgres-1", "redis-1", "blueprints_caddy"}
        ),
        15,
        1,
    )


def test_a_schedule_fires_every_minute(live):
    node = live.node
    assert node.is_active("app-schedule-tick.timer")
    deadline = live.live_at["A"] + SCHEDULE_WAIT

    def ticks() -> list[tuple[int, str]]:
        text = node.exec(["cat", TICKS], check=False).stdout
        return [(int(t), m) for t, m in (line.split() for line in text.splitlines() if line)]

    found = wait_for("the schedule's first run", ticks, max(deadline - time.time(), 0) + 1, 1)
    first = found[0][0]
    delay = first - live.live_at["A"]
    print(
        f"schedule: first run {delay:.0f} s after release A went live, "
        f"{first % 60} s past the minute; runs: {found}"
    )
    TIMINGS.append(("single-vm: release A live -> the every-minute schedule's first run", delay))
    assert delay <= SCHEDULE_WAIT
    result = node.exec(
        ["systemctl", "show", "--value", "-p", "Result", "app-schedule-tick.service"]
    ).stdout.strip()
    assert result == "success"
    # A run after release B went live ran B's definition (worker's env).
    for at, marker in found:
        if "B" in live.live_at and at > live.live_at["B"] + 1:
            assert marker == "B", found
