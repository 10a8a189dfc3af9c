"""Releases rolled out for real (tests/realnode): the release channel of the single-vm and compose
blueprints on a booted node, under traffic.

Each rung's node boots from its plan's bootstrap (no app in it), then gets its releases the way
`pulumi up` hands them over: ssh as `deploy` with the deploy key, the remote Command's text, the
document on stdin. While a client sends HTTPS requests through Caddy without pause:

- release N (the plan's own) brings the app up; the stand-ins answer 400 to any Host but the
  app's domain, yet every probe passes and nothing is restarted;
- N+1 bumps web's image (2 replicas): zero failed requests, the rollout's duration recorded;
- N+2's web never gets healthy (it answers 500 on every path, its health path included): the
  command fails naming web, the node stays on N+1, zero failed requests;
- N+3 scales web to 1 (nothing restarted), N+4 bumps its image again: the single replica's
  longest gap between two answers is measured.
"""

from __future__ import annotations

import re
import time

import pytest
import yaml

from tests.realnode.host import wait_for
from tests.realnode.node import TIMINGS
from tests.realnode.release import (
    ReleaseChannel,
    Resolver,
    Traffic,
    example_app,
    import_tag,
    release_of,
    variant,
)
from tests.realnode.stacks import booted_stack_node, http_status

WEB = "ghcr.io/example/shop-web"
BASE = f"{WEB}:1.4.2"


def _bootstrapped(node) -> None:
    # cloud-init's final stage (the harness's first-boot unit) ran, sshd answers, the volume is
    # mounted; no release was ever delivered to it, so the release unit had nothing to start.
    node.wait_active(["bpt-first-boot.service", "ssh.service", "srv-data.mount"], timeout=240)


class Live:
    """One rung's booted node, its release channel and what the steps need from each other."""

    def __init__(self, rung: str, sn, channel: ReleaseChannel):
        self.rung, self.sn, self.channel, self.node = rung, sn, channel, sn.node
        self.ids: dict[str, str] = {}

    def web(self) -> dict[str, str]:
        """Running web containers: name -> image."""
        pattern = r"web-\d+" if self.rung == "single-vm" else r"shop-web-\d+"
        out = self.node.exec(["docker", "ps", "--format", "{{.Names}} {{.Image}}"]).stdout
        return {
            name: image
            for name, image in (line.split() for line in out.splitlines() if line.strip())
            if re.fullmatch(pattern, name)
        }

    def budget(self, app, service: str) -> int:
        """The health budget the release of `app` gives `service`."""
        body = yaml.safe_load(self.channel.documents(app).release)
        return next(s for s in body["services"] if s["name"] == service)["health"]["budget"]

    def deploy(self, app, what: str, expect: int = 0):
        """Deliver `app`'s release under traffic; (process, traffic, seconds)."""
        docs = self.channel.documents(app)
        with Traffic(self.sn.client()) as traffic:
            started = time.monotonic()
            proc = self.channel.deploy(docs)
            seconds = time.monotonic() - started
            traffic.caddy_reloads = proc.stdout.count("proxy: reloading Caddy")
            time.sleep(1)  # a last answer or two after the command returned
        print(f"\n--- {self.rung}: {what} ({seconds:.1f} s): {traffic.summary()}\n{proc.stdout}")
        for a in traffic.answers:
            if a.status != 200 or a.ended - a.started > 1:
                kind = "failed" if a.status != 200 else "slow"
                since = a.started - started
                print(f"{kind}: {a.status} from {since:.2f} s, {a.ended - a.started:.2f} s long")
        if traffic.failed:
            proxy = "blueprints_caddy" if self.rung == "single-vm" else "shop-blueprints_proxy-1"
            logs = self.node.exec(["docker", "logs", "--since", "2m", proxy], check=False)
            print("\n".join(ln for ln in logs.stderr.splitlines() if '"error"' in ln)[-6000:])
        assert proc.returncode == expect, (
            f"{what}: exit {proc.returncode}, expected {expect}\n{proc.stdout}{proc.stderr}"
        )
        self.ids[what] = release_of(docs.release)
        return proc, traffic, seconds


class Rollouts:
    RUNG = ""
    STACK = ""
    SUFFIX = ""

    @pytest.fixture(scope="class")
    @classmethod
    def live(cls, request):
        with (
            booted_stack_node(cls.STACK, cls.SUFFIX, _bootstrapped, f"{cls.RUNG} bootstrap") as sn,
            Resolver(sn.network) as resolver,
        ):
            resolver.serve(sn.node)
            channel = ReleaseChannel(sn)
            channel.authorize()
            live = Live(cls.RUNG, sn, channel)
            started = time.monotonic()
            proc = channel.deploy(channel.documents())
            assert proc.returncode == 0, f"release N failed:\n{proc.stdout}{proc.stderr}"
            client = sn.client()
            wait_for("HTTPS through Caddy", lambda: client.get("/", 3).status == 200, 90, 0.5)
            TIMINGS.append(
                (
                    f"{cls.RUNG}: first release over ssh -> first HTTPS 200",
                    time.monotonic() - started,
                )
            )
            live.ids["N"] = release_of(channel.documents().release)
            print(f"\n--- {cls.RUNG}: release N\n{proc.stdout}")
            yield live

    def test_release_n_runs_and_a_host_checking_app_stays_healthy(self, live):
        node = live.node
        assert live.channel.current() == live.ids["N"]
        web = live.web()
        assert sorted(web.values()) == [BASE, BASE]
        ips = node.exec(
            [
                "docker",
                "inspect",
                "--format",
                # compose: the app's network and, once healthy, the proxy's
                "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
                *web,
            ]
        ).stdout.split()
        # The replicas answer 400 to another Host, as Django's ALLOWED_HOSTS would...
        assert {http_status(node.exec, f"http://{ip}:8000/healthz") for ip in ips} == {"400"}
        # ...yet their probes (and Caddy's) send the domain: healthy, never restarted.
        assert live.sn.client().get("/healthz").status == 200
        if live.rung == "single-vm":
            for n in (1, 2):
                restarts = node.exec(
                    ["systemctl", "show", "--value", "-p", "NRestarts", f"app-web@{n}"]
                ).stdout.strip()
                assert restarts == "0"
            assert "restarting" not in node.journal("app-web-health.service", 200)
        else:
            inspect = node.exec(
                [
                    "docker",
                    "inspect",
                    "--format",
                    "{{.RestartCount}} {{.State.Health.Status}}",
                    *web,
                ]
            ).stdout.split("\n")
            assert [line for line in inspect if line] == ["0 healthy", "0 healthy"]
            assert "is unhealthy" not in node.journal("app-autoheal.service", 200)
        status = live.channel.ssh("sudo /usr/local/lib/blueprints/release-agent status", "")
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"current: {live.ids['N']}" in status.stdout

    def test_a_new_image_rolls_out_without_a_failed_request(self, live):
        import_tag(live.node, live.node.images, f"{WEB}:1.4.3", like=BASE)
        app = variant(example_app(), image=f"{WEB}:1.4.3")
        before = set(live.web())
        proc, traffic, seconds = live.deploy(app, "N+1")
        TIMINGS.append(
            (
                f"{live.rung}: web 1.4.2 -> 1.4.3, 2 replicas: rollout "
                f"({len(traffic.failed)} of {len(traffic.answers)} requests failed, "
                f"{len(traffic.dropped_by_reloads())} lost at a Caddy reload)",
                seconds,
            )
        )
        assert traffic.unexplained() == [], traffic.summary()
        assert len(traffic.answers) > 20
        assert sorted(live.web().values()) == [f"{WEB}:1.4.3"] * 2
        assert live.channel.current() == live.ids["N+1"]
        if live.rung == "compose":
            assert not before & set(live.web())  # new containers, old ones gone
        # Only web moved: no step of the other services (the plan's summary lines are indented).
        assert not re.search(r"\] (postgres|redis|worker): ", proc.stdout), proc.stdout

    def test_a_release_that_never_gets_healthy_is_rolled_back(self, live):
        import_tag(live.node, live.node.images, f"{WEB}:broken", like=BASE, healthy=False)
        # A short health budget (start period 1 s, one retry) keeps the wait short.
        app = variant(
            example_app(), image=f"{WEB}:broken", health={"start_period": "1s", "retries": 1}
        )
        budget = live.budget(app, "web")
        before = live.web()
        proc, traffic, seconds = live.deploy(app, "N+2", expect=1)
        TIMINGS.append(
            (
                f"{live.rung}: web never healthy -> rolled back "
                f"({len(traffic.failed)} of {len(traffic.answers)} requests failed, "
                f"{len(traffic.dropped_by_reloads())} lost at a Caddy reload)",
                seconds,
            )
        )
        assert re.search(
            rf"^release {live.ids['N+2']}: web did not become healthy within {budget} s \(.+\); "
            rf"rolled back to {live.ids['N+1']}$",
            proc.stderr.strip(),
            re.M,
        ), proc.stderr
        assert traffic.unexplained() == [], traffic.summary()
        assert live.channel.current() == live.ids["N+1"]
        assert live.web() == before

    def test_a_single_replica_service_rolls_out_beside_itself(self, live):
        one = variant(example_app(), image=f"{WEB}:1.4.3", replicas=1)
        _, traffic, _ = live.deploy(one, "N+3 (web scaled to 1)")
        assert traffic.unexplained() == [], traffic.summary()
        assert len(live.web()) == 1
        import_tag(live.node, live.node.images, f"{WEB}:1.4.4", like=BASE)
        _, traffic, seconds = live.deploy(
            variant(example_app(), image=f"{WEB}:1.4.4", replicas=1), "N+4"
        )
        TIMINGS.append(
            (
                f"{live.rung}: single-replica web 1.4.3 -> 1.4.4: rollout "
                f"({len(traffic.failed)} of {len(traffic.answers)} requests failed, "
                f"{len(traffic.dropped_by_reloads())} lost at a Caddy reload)",
                seconds,
            )
        )
        TIMINGS.append(
            (
                f"{live.rung}: single-replica web: longest gap between two 200s",
                traffic.longest_gap(),
            )
        )
        TIMINGS.append((f"{live.rung}: single-replica web: slowest request", traffic.slowest()))
        assert traffic.unexplained() == [], traffic.summary()
        assert list(live.web().values()) == [f"{WEB}:1.4.4"]

    def test_after_a_reboot_the_node_runs_the_release_found_on_the_volume(self, live):
        node = live.node
        node.reboot()
        node.wait_booted()
        client = live.sn.client()
        wait_for("HTTPS after the reboot", lambda: client.get("/", 3).status == 200, 120, 0.5)
        TIMINGS.append(
            (
                f"{live.rung}: reboot -> release from the volume answers over HTTPS",
                time.monotonic() - node.started_at,
            )
        )
        assert node.is_active("blueprints-release.service")
        assert live.channel.current() == live.ids["N+4"]
        assert list(live.web().values()) == [f"{WEB}:1.4.4"]
        assert "activating release" in node.journal("blueprints-release.service")


class TestSingleVm(Rollouts):
    RUNG = "single-vm"
    STACK = "single-vm-hcloud"
    SUFFIX = "-primary"


class TestCompose(Rollouts):
    RUNG = "compose"
    STACK = "compose-hcloud"
    SUFFIX = "-vm"
