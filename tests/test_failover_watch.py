"""The watchdog's parts, in-process: the bounded health probe against real sockets, the host
rule, the Watchdog loop against the fake Hetzner API (the real hcloud driver), the bounded
cloud clients, the hard deadline, the webhook, and the healthUrl check."""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest
from fakes import FakeHcloud

from blueprints.failover.cloud import (
    CloudError,
    Node,
    PromotionFailed,
    PromotionRefused,
    PromotionTakenOver,
)
from blueprints.failover.hcloud_cloud import HcloudCloud
from blueprints.failover.health import http_check, is_local_address
from blueprints.failover.hostcheck import (
    REACHABLE,
    UNKNOWN,
    UNREACHABLE,
    HostCheck,
    Verdict,
    Vote,
    cloud_vote,
    private_address,
)
from blueprints.failover.promote import Result
from blueprints.failover.session import (
    DeadlineExceeded,
    Notifier,
    aws_cloud,
    deadline,
    hcloud_cloud,
    park_budget,
    promote_budget,
)
from blueprints.failover.watch import (
    PROMOTE_RETRY,
    Watchdog,
    WatchResult,
    unit_name,
    watchdog_unit,
)
from blueprints.settings import parse_settings
from blueprints.spec import SpecError, load_spec

ROOT = Path(__file__).resolve().parent.parent
APP = load_spec(ROOT / "examples/app.yaml")
STACK = "single-vm-hcloud"


# -- the probe: one total deadline ---------------------------------------------------------


class _Server:
    """A TCP server on 127.0.0.1 running `handle(conn)` per connection in a thread."""

    def __init__(self, handle):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.handle = handle
        self.conns: list[socket.socket] = []
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn):
        with contextlib.suppress(OSError):
            self.handle(conn, self.stop)

    def close(self):
        self.stop.set()
        self.sock.close()
        for c in self.conns:
            c.close()


def _trickle(conn, stop):
    conn.recv(4096)
    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n":
        if stop.wait(1.0):
            return
        conn.sendall(bytes([byte]))


def _silent(conn, stop):
    stop.wait(30)


def _answer(status: bytes):
    def handle(conn, _stop):
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")

    return handle


@pytest.mark.parametrize(
    ("template", "handle"),
    [
        ("http://{address}:PORT{path}", _trickle),  # a byte a second: never a read timeout
        ("http://{address}:PORT{path}", _silent),
        ("https://{domain}:PORT{path}", _silent),  # a TLS handshake that never proceeds
        ("https://{domain}:PORT{path}", _trickle),  # bytes that are not TLS, slowly
    ],
    ids=["trickle", "silent", "tls-silent", "tls-trickle"],
)
def test_one_probe_lasts_at_most_its_timeout(template, handle):
    server = _Server(handle)
    try:
        check = http_check(APP, template.replace("PORT", str(server.port)), timeout=1)
        started = time.monotonic()
        healthy, seen = check("127.0.0.1")
        took = time.monotonic() - started
    finally:
        server.close()
    assert not healthy
    assert took <= 1.5, f"one probe took {took:.2f}s with probeTimeout 1"
    assert seen  # says why, for the watchdog's log line


@pytest.mark.parametrize(
    ("status", "healthy", "seen"),
    [
        (b"200 OK", True, "HTTP 200"),
        (b"302 Found", True, "HTTP 302"),
        (b"503 Service Unavailable", False, "HTTP 503"),
    ],
)
def test_probe_reads_the_status(status, healthy, seen):
    server = _Server(_answer(status))
    try:
        check = http_check(APP, f"http://{{address}}:{server.port}{{path}}", timeout=2)
        assert check("127.0.0.1") == (healthy, seen)
    finally:
        server.close()


def test_probe_sends_the_host_and_path():
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers["Host"]))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        port = srv.server_address[1]
        check = http_check(APP, f"http://{{domain}}:{port}{{path}}", timeout=2)
        assert check("127.0.0.1") == (True, "HTTP 204")
    finally:
        srv.shutdown()
        srv.server_close()
    assert seen == [("/healthz", f"{APP.domain}:{port}")]


def test_probe_of_a_closed_port_fails_at_once():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    check = http_check(APP, f"http://{{address}}:{port}{{path}}", timeout=3)
    started = time.monotonic()
    assert check("127.0.0.1") == (False, "Connection refused")
    assert time.monotonic() - started < 1


# -- healthUrl, checked when the stack is read ------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://{domain}{path}",
        "http://{address}:8080{path}",
        "https://{domain}/ready?from={address}",
        "http://{address}{path}",
    ],
)
def test_health_url_accepted(url):
    raw = {"blueprint": "single-vm", "target": "hcloud", "healthUrl": url}
    assert parse_settings(raw, "stacks/x.yaml").health_url == url


@pytest.mark.parametrize(
    "url",
    [
        "https://{host}{path}",  # an unknown field
        "https://{domain}{path!r}",  # a conversion
        "https://{domain}{path:>9}",  # a format spec
        "https://{0}{path}",  # a positional field
        "https://{domain",  # unbalanced
        "ftp://{domain}{path}",  # not http(s)
        "{domain}{path}",  # no scheme
        "https://status.example.org{path}",  # a fixed host probes the same place for both nodes
        "https://{domain}{address}",  # the host is not one field
        "https://{domain}:{path}",  # a port that is not a number
        "https://{domain}:99999{path}",  # a port out of range
        "https://user@{domain}{path}",  # user info
        "https://{domain} {path}",  # whitespace
    ],
)
def test_health_url_refused(url):
    raw = {"blueprint": "single-vm", "target": "hcloud", "healthUrl": url}
    with pytest.raises(SpecError) as exc:
        parse_settings(raw, "stacks/x.yaml")
    (line,) = str(exc.value).splitlines()
    assert line.startswith(
        "stacks/x.yaml: blueprints:healthUrl: must be an http or https URL whose host is "
        "{address} or {domain} (a :port may follow) and whose only fields are {address}, "
        "{domain} and {path}"
    )
    assert line.endswith(f"(got {url!r})")


# -- the host rule ----------------------------------------------------------------------------

NODE = Node("primary", "1", "running", "203.0.113.10")


def _tcp(answers: dict[tuple[str, int], bool]):
    calls = []

    def tcp(address, port, timeout):
        calls.append((address, port))
        ok = answers.get((address, port), False)
        return ok, ("TCP open" if ok else f"no answer on TCP {port}")

    tcp.calls = calls
    return tcp


def test_host_paths_and_votes():
    tcp = _tcp({("203.0.113.10", 22): True})
    check = HostCheck("10.0.1.0/24", tcp=tcp, source_for=lambda _a: "10.0.1.11")
    votes = check.votes(NODE, "198.51.100.7", ip_on_node=True)
    assert [(v.path, v.verdict) for v in votes] == [
        # 443 and the floating IP silent, 22 answered: one answer is enough for the public side
        ("public address 203.0.113.10 and floating IP 198.51.100.7", REACHABLE),
        ("private address 10.0.1.10", UNREACHABLE),
    ]
    assert sorted(tcp.calls) == sorted(
        [
            ("203.0.113.10", 443),
            ("203.0.113.10", 22),
            ("198.51.100.7", 443),
            ("10.0.1.10", 22),
        ]
    )


def test_the_public_address_and_the_floating_ip_are_one_path():
    """On AWS the instance's public address is the Elastic IP once associated: one target,
    checked once, one vote. Silent, it is one path of the two a dead host needs."""
    tcp = _tcp({})
    check = HostCheck("10.0.1.0/24", tcp=tcp, source_for=lambda _a: None)
    votes = check.votes(NODE, NODE.address, ip_on_node=True)
    assert [(v.path, v.verdict) for v in votes] == [
        ("public address 203.0.113.10 (the floating IP)", UNREACHABLE)
    ]
    assert sorted(tcp.calls) == [("203.0.113.10", 22), ("203.0.113.10", 443)]
    # A hung VM seen from outside the private network: the cloud says running, an alert.
    assert not Verdict("primary", (*votes, cloud_vote(NODE))).dead
    # The same silence while the cloud says the server is off: dead.
    off = Node("primary", "1", "off", NODE.address)
    assert Verdict("primary", (*votes, cloud_vote(off))).dead


def test_host_paths_skip_what_does_not_apply():
    """No private path unless this machine is in subnetCidr; no floating-IP path when the
    address does not point at the node."""
    tcp = _tcp({})
    check = HostCheck("10.0.1.0/24", port=8443, tcp=tcp, source_for=lambda _a: "192.0.2.5")
    votes = check.votes(NODE, "198.51.100.7", ip_on_node=False)
    assert [v.path for v in votes] == ["public address 203.0.113.10"]
    assert sorted(tcp.calls) == [("203.0.113.10", 22), ("203.0.113.10", 8443)]


def test_the_control_is_used_only_without_a_private_path():
    spare = Node("spare", "2", "running", "203.0.113.11")
    outside = HostCheck("10.0.1.0/24", tcp=_tcp({}), source_for=lambda _a: None)
    roles = [role for role, *_ in outside.tcp_paths(NODE, "", False, standby=spare)]
    assert roles == ["public", "control"]
    inside = HostCheck("10.0.1.0/24", tcp=_tcp({}), source_for=lambda _a: "10.0.1.11")
    roles = [role for role, *_ in inside.tcp_paths(NODE, "", False, standby=spare)]
    assert roles == ["public", "private"]


@pytest.mark.parametrize(
    ("source", "private"),
    [
        ("10.0.1.11", True),  # the spare's own address: the second path
        ("10.0.1.57", False),  # somewhere in the subnet (a VPN, a peered network): not a path
        ("10.0.1.10", False),  # the checked node itself
        (None, False),
    ],
)
def test_the_private_path_needs_a_node_address(source, private):
    check = HostCheck("10.0.1.0/24", tcp=_tcp({}), source_for=lambda _a: source)
    paths = [name for _role, name, _targets in check.tcp_paths(NODE, "", ip_on_node=False)]
    assert ("private address 10.0.1.10" in paths) is private


def test_private_address_is_the_programs():
    from blueprints.settings import parse_settings as ps
    from blueprints.single_vm import node_ip

    settings = ps({"blueprint": "single-vm", "target": "hcloud"}, "x")
    for index, node in enumerate(("primary", "spare")):
        assert private_address(settings.subnet_cidr, node) == node_ip(settings, index)


@pytest.mark.parametrize(
    ("verdicts", "dead"),
    [
        ((REACHABLE, REACHABLE, REACHABLE, REACHABLE), False),
        ((UNREACHABLE, REACHABLE, REACHABLE, REACHABLE), False),  # one path: an alert
        ((UNREACHABLE, UNKNOWN, UNKNOWN, REACHABLE), False),
        ((UNREACHABLE, UNREACHABLE, REACHABLE, REACHABLE), True),  # two paths: dead
        ((UNREACHABLE, UNREACHABLE, UNREACHABLE, REACHABLE), True),  # a hung VM: "running"
    ],
)
def test_two_unreachable_paths_make_a_dead_host(verdicts, dead):
    votes = tuple(Vote(f"path {i}", v, v) for i, v in enumerate(verdicts))
    assert Verdict("primary", votes).dead is dead


def test_cloud_vote():
    assert cloud_vote(NODE).verdict == REACHABLE
    assert cloud_vote(Node("primary", "1", "off", "")).verdict == UNREACHABLE
    assert cloud_vote(None, "timed out").verdict == UNKNOWN


# -- the Watchdog against the fake Hetzner API -------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 1000.0

    def time(self):
        return self.now

    def sleep(self, seconds):
        self.now += max(seconds, 0.001)


class Stop(BaseException):
    pass


class Rig:
    """The fake API with the stack's servers, a scripted app and host, and a Watchdog."""

    FIP = "198.51.100.7"
    PUBLIC: ClassVar[dict[str, str]] = {"primary": "203.0.113.10", "spare": "203.0.113.11"}
    PRIVATE: ClassVar[dict[str, str]] = {"primary": "10.0.1.10", "spare": "10.0.1.11"}

    def __init__(self, fake: FakeHcloud):
        self.fake = fake
        base = {"app": "shop", "blueprint": "single-vm", "stack": STACK}
        self.ids = {
            node: fake.add_server(
                node[0],
                labels={**base, "node": node},
                status="running",
                ipv4=self.PUBLIC[node],
            )
            for node in ("primary", "spare")
        }
        self.volume = fake.add_volume("d", labels=base, server=self.ids["primary"])
        self.fip = fake.add_floating_ip("ip", labels=base, server=self.ids["primary"], ip=self.FIP)
        self.cloud = HcloudCloud(fake.client(), "shop", STACK)
        self.app_up = True
        self.alive: set[str] = {self.FIP, *self.PUBLIC.values(), *self.PRIVATE.values()}
        self.promotions: list[str] = []
        self.dead_judged: list[str] = []  # what each promotion was told is dead
        self.probed: list[str] = []
        self.tcp_calls: list[str] = []
        # The watcher's source address towards the private network: the warm spare's.
        self.source: str | None = self.PRIVATE["spare"]
        self.fip_local = False
        self.refuse: str | None = None
        self.notified: list[tuple[str, str]] = []
        self.lines: list[str] = []
        self.clock = Clock()
        self.stop_after: int | None = None
        self.sleeps = 0

    def check(self, address):
        self.probed.append(address)
        return (True, "HTTP 200") if self.app_up else (False, "HTTP 503")

    def tcp(self, address, port, timeout):
        self.tcp_calls.append(address)
        return (address in self.alive), f"TCP {port}"

    def hang(self, node="primary"):
        """The node's host stops answering on every path; the cloud still says running."""
        self.app_up = False
        self.alive -= {self.PUBLIC[node], self.PRIVATE[node]}
        if node == "primary":
            self.alive.discard(self.FIP)

    def promote(self, dead):
        self.dead_judged.append(dead)
        if self.refuse:
            raise PromotionRefused(self.refuse)
        client = self.fake.client()
        spare = client.servers.get_by_id(self.ids["spare"])
        client.volumes.get_by_id(self.volume).detach().wait_until_finished()
        client.volumes.get_by_id(self.volume).attach(spare).wait_until_finished()
        client.floating_ips.get_by_id(self.fip).assign(spare).wait_until_finished()
        self.promotions.append("spare")
        self.app_up = True
        self.alive = {self.PUBLIC["spare"], self.PRIVATE["spare"], self.FIP}
        steps = ["fence", "detach", "attach", "address"]
        return Result("spare", steps, "recorded", source="primary")

    def sleep(self, seconds):
        self.sleeps += 1
        if self.stop_after is not None and self.sleeps >= self.stop_after:
            raise Stop()
        self.clock.sleep(seconds)

    def dog(self, failures=3):
        return Watchdog(
            self.cloud,
            self.check,
            self.promote,
            HostCheck("10.0.1.0/24", tcp=self.tcp, source_for=lambda _a: self.source, timeout=0.5),
            configured="primary",
            interval=5,
            failures=failures,
            api_timeout=2,
            clock=self.clock.time,
            sleep=self.sleep,
            log=self.lines.append,
            notify=lambda event, text: self.notified.append((event, text)),
            local=lambda address: self.fip_local and address == self.FIP,
        )


@pytest.fixture
def rig():
    with FakeHcloud(action_polls=1) as fake:
        yield Rig(fake)


def test_app_failing_on_a_live_host_alerts_once_per_incident(rig):
    dog = rig.dog()
    rig.app_up = False
    for _ in range(10):  # many cycles of one incident
        dog.cycle()
    assert rig.promotions == []
    assert [e for e, _ in rig.notified] == ["alert"]
    assert "primary's host answers (0 of 3 paths unreachable" in rig.notified[0][1]
    rig.app_up = True
    dog.cycle()
    dog.cycle()
    assert [e for e, _ in rig.notified] == ["alert", "recovered"]
    rig.app_up = False  # a second incident: alerted again, once
    for _ in range(6):
        dog.cycle()
    assert [e for e, _ in rig.notified] == ["alert", "recovered", "alert"]
    assert dog.result.alerts == 2
    assert dog.result.exit_code == 4
    assert sum(line.startswith("alert:") for line in rig.lines) == 2


def test_one_unreachable_path_is_not_enough(rig):
    """The private network fails between the nodes, the app fails too: the public side
    answers and the cloud says running, so one path of three is silent: an alert."""
    dog = rig.dog()
    rig.app_up = False
    rig.alive.discard(Rig.PRIVATE["primary"])
    for _ in range(3):
        dog.cycle()
    assert rig.promotions == []
    assert [e for e, _ in rig.notified] == ["alert"]
    assert "1 of 3 paths unreachable" in rig.notified[0][1]


def test_a_hung_host_seen_from_outside_is_promoted_when_the_other_node_answers(rig):
    """From outside the private network a hung VM (the cloud says running) has one silent
    path; the warm spare answering on the same network at that moment shows the silence is
    the host's, not the watcher's route: promoted."""
    rig.source = None  # a machine elsewhere: no private path
    dog = rig.dog()
    rig.hang("primary")
    for _ in range(3):
        dog.cycle()
    assert rig.promotions == ["spare"]
    line = next(x for x in rig.lines if x.startswith("host primary is unreachable"))
    assert (
        "1 of 2 paths unreachable and the other node answers on the same network "
        "(spare 203.0.113.11: TCP 443)" in line
    )


def test_a_watcher_cut_off_from_the_nodes_only_alerts(rig):
    """The watcher's own network fails: neither node answers, the cloud says running. One
    silent path, no control: an alert, never a fence (nor a flap back and forth)."""
    rig.source = None
    dog = rig.dog()
    rig.app_up = False
    rig.alive -= {Rig.FIP, *Rig.PUBLIC.values()}
    for _ in range(5):
        dog.cycle()
    assert rig.promotions == []
    assert [e for e, _ in rig.notified] == ["alert"]
    assert "1 of 2 paths unreachable:" in rig.notified[0][1]


def test_a_hung_host_with_a_cold_spare_seen_from_outside_only_alerts(rig):
    """The trade-off: no private path, no control (the cold spare is off), and the cloud says
    running: an alert for a person, not a promotion."""
    rig.source = None
    rig.fake.set_status(rig.ids["spare"], "off")
    rig.alive -= {rig.PUBLIC["spare"], rig.PRIVATE["spare"]}  # a server that is off answers nothing
    dog = rig.dog()
    rig.hang("primary")
    for _ in range(5):
        dog.cycle()
    assert rig.promotions == []
    assert [e for e, _ in rig.notified] == ["alert"]
    assert "1 of 2 paths unreachable:" in rig.notified[0][1]


def test_a_control_found_off_at_the_last_read_is_asked_anyway(rig):
    """The watchdog's picture of the other node may be old (the cloud is read beside the host
    checks, not before them): a standby powered on since the last read still corroborates."""
    rig.source = None
    rig.fake.set_status(rig.ids["spare"], "off")
    dog = rig.dog()
    dog.cycle()  # the app answers; the watchdog has read the cloud: the spare is off
    rig.fake.set_status(rig.ids["spare"], "running")  # powered on again as a warm standby
    rig.hang("primary")
    for _ in range(3):
        dog.cycle()
    assert rig.dead_judged == ["primary"]
    assert [e for e, _ in rig.notified if e == "alert"] == []


def test_the_control_is_never_this_machine(rig):
    """A watchdog on the spare (its own public address is local) without a private path does
    not use itself as the control."""
    rig.source = None
    dog = rig.dog()
    dog.local = lambda address: address == Rig.PUBLIC["spare"]
    rig.hang("primary")
    for _ in range(3):
        dog.cycle()
    assert rig.promotions == []
    assert Rig.PUBLIC["spare"] not in rig.tcp_calls


def test_host_unreachable_on_two_paths_promotes(rig):
    dog = rig.dog()
    rig.hang("primary")  # the cloud still says running: a hung VM
    for _ in range(2):
        dog.cycle()
    assert rig.promotions == []  # not before watchFailures in a row
    dog.cycle()
    assert rig.promotions == ["spare"]
    assert rig.dead_judged == ["primary"]  # the promotion goes away from the node judged dead
    line = next(x for x in rig.lines if x.startswith("host primary is unreachable"))
    assert "2 of 3 paths unreachable" in line and "cloud status: running" in line
    assert dog.result.exit_code == 0


def test_a_powered_off_host_promotes_from_outside(rig):
    rig.source = None
    dog = rig.dog()
    rig.app_up = False
    rig.alive -= {Rig.PUBLIC["primary"], Rig.FIP}
    rig.fake.set_status(rig.ids["primary"], "off")
    for _ in range(3):
        dog.cycle()
    assert rig.promotions == ["spare"]
    line = next(x for x in rig.lines if x.startswith("host primary is unreachable"))
    assert "2 of 2 paths unreachable" in line and "cloud status: off" in line


def test_a_host_that_dies_during_an_alert_is_promoted_away_from(rig):
    dog = rig.dog()
    rig.app_up = False
    for _ in range(4):
        dog.cycle()
    assert [e for e, _ in rig.notified] == ["alert"] and rig.promotions == []
    rig.hang("primary")
    dog.cycle()
    assert rig.promotions == ["spare"]


def test_the_long_lived_watch_goes_on_after_a_promotion(rig):
    """run() without a duration only ends when stopped from outside (here: the Nth sleep);
    after the promotion it watches the node the cloud now says is active."""
    dog = rig.dog()
    rig.hang("primary")
    rig.stop_after = 12
    with pytest.raises(Stop):
        dog.run()
    assert rig.promotions == ["spare"]
    assert "watching the app on spare now" in rig.lines
    after = rig.lines[rig.lines.index("watching the app on spare now") + 1 :]
    assert after == ["recovered: the app answers at 198.51.100.7 again"]
    probes_at_promotion = 3
    assert dog.result.probes == 12 and dog.result.probes > probes_at_promotion
    # The spare's app fails on its live host: the same watchdog alerts about the spare.
    rig.app_up = False
    for _ in range(3):
        dog.cycle()
    assert "spare's host answers" in rig.notified[-1][1]


def test_a_local_floating_ip_is_not_probed(rig):
    """On Hetzner the floating IP is configured on eth0 of both nodes: on the warm spare it is
    an address of the watching machine. The watchdog probes the holder's own public address
    instead, and leaves the floating IP out of the host check."""
    rig.fip_local = True
    dog = rig.dog()
    dog.cycle()
    assert rig.probed == [Rig.PUBLIC["primary"]]
    assert any("the floating IP 198.51.100.7 is an address of this machine" in x for x in rig.lines)
    rig.hang("primary")
    rig.alive.add(Rig.FIP)  # the spare answers on it, to itself
    for _ in range(3):
        dog.cycle()
    assert Rig.FIP not in rig.tcp_calls
    assert rig.promotions == ["spare"]
    line = next(x for x in rig.lines if x.startswith("host primary is unreachable"))
    assert "floating IP" not in line and "2 of 3 paths unreachable" in line
    rig.probed.clear()
    dog.cycle()  # after the promotion: the new holder's own address
    assert rig.probed == [Rig.PUBLIC["spare"]]
    assert set(rig.probed).isdisjoint({Rig.FIP})


def test_a_local_floating_ip_follows_a_promotion_made_elsewhere(rig):
    """Someone else promoted (a CI job): the watchdog probing the old holder's address sees it
    fail, reads the cloud, and probes the new holder instead of alerting."""
    rig.fip_local = True
    dog = rig.dog()
    dog.cycle()
    rig.promote("primary")  # another promoter moved the app; this watchdog did not see it
    rig.alive.discard(Rig.PUBLIC["primary"])
    rig.app_up = True
    dog.check = lambda address: (address != Rig.PUBLIC["primary"], "HTTP 200")
    for _ in range(3):
        dog.cycle()
    assert "the cloud moved the app to spare; probing it there" in rig.lines
    dog.cycle()
    assert rig.notified == [] and dog.result.alerts == 0


def test_a_refused_promotion_is_retried_later(rig):
    dog = rig.dog()
    rig.hang("primary")
    rig.refuse = "another promotion to spare is in progress (by ci-1)"
    for _ in range(3):
        dog.cycle()
    assert dog.result.refusals == [rig.refuse]
    rig.refuse = None
    dog.cycle()  # within PROMOTE_RETRY: not yet
    assert rig.promotions == []
    rig.clock.now += PROMOTE_RETRY
    dog.cycle()
    assert rig.promotions == ["spare"]
    assert [e for e, _ in rig.notified] == ["refused"]
    assert dog.result.exit_code == 3


def test_a_taken_over_promotion_says_stopped(rig):
    dog = rig.dog()
    rig.hang("primary")

    def taken(_dead):
        raise PromotionTakenOver("the promotion lock was taken over by ci-2; this run stopped")

    dog.promote = taken
    for _ in range(3):
        dog.cycle()
    assert [e for e, _ in rig.notified] == ["stopped"]
    assert any(x.startswith("promotion stopped: the promotion lock") for x in rig.lines)
    assert not any("refused" in x for x in rig.lines)
    assert dog.result.exit_code == 3


def test_a_failed_promotion_exits_1(rig):
    dog = rig.dog()
    rig.hang("primary")

    def fail(_dead):
        raise PromotionFailed("the promotion stopped at step attach: boom")

    dog.promote = fail
    for _ in range(3):
        dog.cycle()
    assert dog.result.failures and dog.result.exit_code == 1
    assert [e for e, _ in rig.notified] == ["failed"]


def test_an_unexpected_error_in_a_promotion_is_one_sentence_and_the_watch_goes_on(rig):
    dog = rig.dog()
    rig.hang("primary")

    def bug(_dead):
        raise RuntimeError("boom")

    dog.promote = bug
    for _ in range(3):
        dog.cycle()
    assert dog.result.failures == ["RuntimeError: boom"]
    assert "promotion failed: RuntimeError: boom" in rig.lines
    dog.promote = rig.promote
    rig.clock.now += PROMOTE_RETRY
    dog.cycle()  # still watching, and promoting once the retry is due
    assert rig.promotions == ["spare"]


def test_steady_state_reads_the_cloud_once(rig):
    dog = rig.dog()
    rig.fake.clear_requests()
    for _ in range(20):
        dog.cycle()
    assert rig.fake.requests.count(("GET", "/v1/servers")) == 1


def test_a_silent_api_at_the_threshold_costs_one_api_timeout(rig):
    """The cloud read beside the host checks is abandoned after apiTimeout: its vote is
    unknown, the TCP paths decide."""
    dog = rig.dog()
    dog.cycle()  # the first read, while the API answers
    rig.hang("primary")
    dog.cycle()
    dog.cycle()
    rig.fake.silence()
    try:
        dog.next_promotion = rig.clock.now + 1000  # time only the checks, not a promotion
        started = time.monotonic()
        dog.cycle()
        took = time.monotonic() - started
    finally:
        rig.fake.silence(False)
    assert took <= 2 + 1 + 0.5, took  # apiTimeout + the join's slack + the TCP checks
    line = next(x for x in rig.lines if x.startswith("host primary is unreachable"))
    assert "2 of 3 paths unreachable" in line and "cloud status" not in line


def test_a_blind_start_is_retried_then_fails_the_bounded_watch(rig):
    rig.fake.silence()
    try:
        dog = rig.dog()
        dog.api_timeout = 0.3
        result = dog.run(duration=12)
    finally:
        rig.fake.silence(False)
    assert result.blind == "no answer within 0.3s"
    assert result.exit_code == 1
    assert rig.lines == ["cloud: cannot read the stack (no answer within 0.3s); retrying"]
    assert [e for e, _ in rig.notified] == ["blind"]


def test_watch_result_exit_codes():
    assert WatchResult().exit_code == 0
    assert WatchResult(refusals=["x"]).exit_code == 3
    assert WatchResult(alerts=1, refusals=["x"]).exit_code == 4
    assert WatchResult(alerts=1, failures=["x"]).exit_code == 1
    assert WatchResult(blind="x").exit_code == 1


# -- bounded clients, budgets, the hard deadline -------------------------------------------


def test_hcloud_client_has_a_timeout_and_no_hidden_retries():
    cloud = hcloud_cloud(APP, STACK, token="t", endpoint="http://127.0.0.1:9/v1", timeout=7)
    base = cloud.client._client
    assert base._timeout == 7
    assert base._retry_max_retries == 0  # the attribute the SDK's retry loop reads


def test_hcloud_token_is_stripped():
    """A token with a trailing carriage return (an env file written on Windows) works, and
    neither form ever appears in an error."""
    with FakeHcloud(token="s3cr3t-t0ken") as fake:
        cloud = hcloud_cloud(APP, STACK, token="s3cr3t-t0ken\r\n", endpoint=fake.url)
        assert abs(cloud.now() - time.time()) < 5


@pytest.mark.parametrize("token", ["s3cr3t-t0ken\r", "s3cr3t\nt0ken"])
def test_hcloud_errors_never_show_the_token(token):
    """Given to the driver as is (a token no strip can mend), the SDK's error quotes the
    Authorization header; the driver's sentence does not."""
    from hcloud import Client

    with FakeHcloud() as fake:
        cloud = HcloudCloud(Client(token=token, api_endpoint=fake.url), "shop", STACK)
        for call in (cloud.now, cloud.snapshot, cloud.read_lock):
            with pytest.raises(CloudError) as exc:
                call()
            text = str(exc.value)
            assert "Bearer ***" in text or "***" in text, text
            for part in ("s3cr3t", "t0ken"):
                assert part not in text, text


def test_a_date_header_that_is_no_date_is_one_sentence():
    with FakeHcloud() as fake:
        cloud = HcloudCloud(fake.client(), "shop", STACK)

        def garble(response, *_a, **_k):
            response.headers["Date"] = "yesterday, around noon"

        cloud.client._client._session.hooks["response"].insert(0, garble)
        with pytest.raises(CloudError) as exc:
            cloud.now()
    assert str(exc.value) == (
        "the Hetzner API answered with a Date header that is not a date ('yesterday, around "
        "noon'); the promotion lock needs the cloud's clock"
    )


def test_is_local_address():
    assert is_local_address("127.0.0.5")  # any 127/8 address binds on Linux
    assert not is_local_address("198.51.100.254")  # TEST-NET-2: never this machine's
    assert not is_local_address("not an address")


def test_boto3_client_has_timeouts_and_one_attempt():
    settings = parse_settings({"blueprint": "single-vm", "target": "localstack"}, "x")
    cloud = aws_cloud(settings, APP, "single-vm-localstack", timeout=4)
    config = cloud.ec2.meta.config
    assert (config.connect_timeout, config.read_timeout) == (4, 4)
    assert config.retries["total_max_attempts"] == 1


def test_budgets():
    settings = parse_settings({"blueprint": "single-vm", "target": "hcloud"}, "x")
    assert promote_budget(settings) == 300 + 20 * 10
    assert park_budget(settings) == 100


def test_deadline_interrupts_a_blocking_read():
    a, b = socket.socketpair()
    try:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="too slow"), deadline(0.3, "too slow"):
            a.recv(1)  # blocks: nothing is ever sent
        assert time.monotonic() - started < 1
    finally:
        a.close()
        b.close()


def test_notifier_never_holds_up_the_caller():
    release = threading.Event()

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            release.wait(10)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    warnings: list[str] = []
    try:
        notifier = Notifier(f"http://127.0.0.1:{srv.server_address[1]}/", STACK, 1, warnings.append)
        started = time.monotonic()
        notifier("alert", "x")
        assert time.monotonic() - started < 0.2
        notifier.close()
        assert time.monotonic() - started < 3
    finally:
        release.set()
        srv.shutdown()
        srv.server_close()
    assert len(warnings) == 1 and "notifying" in warnings[0]


def test_watchdog_unit_text_is_deterministic():
    args = (STACK, "/opt/shop", "blueprints", "/etc/blueprints-watch/x.env", "/opt/shop/b")
    text = watchdog_unit(*args)
    assert text == watchdog_unit(*args)
    assert unit_name(STACK) == "blueprints-watch-single-vm-hcloud.service"
    assert "\nRestart=always\n" in text and "\nStartLimitIntervalSec=0\n" in text
    with pytest.raises(ValueError, match="cannot be written into a systemd unit"):
        watchdog_unit(STACK, "/opt/my shop", "blueprints", "/etc/x.env", "/b")
