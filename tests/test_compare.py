"""`blueprints compare`: figures derived from the stacks, priced from the shipped table."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from decimal import Decimal
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from blueprints import compare_output, costs
from blueprints.cli import app
from blueprints.compare import CompareError, compare, moving_parts
from blueprints.failure import CLOUD_TIMES, failure_model
from blueprints.rungs.single_vm.failure import single_vm_recovery
from blueprints.settings import StackSettings
from blueprints.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
D = Decimal


@pytest.fixture(scope="module")
def hcloud():
    return compare("hcloud", project_dir=ROOT)


@pytest.fixture(scope="module")
def localstack():
    return compare("localstack", project_dir=ROOT)


def row(comparison, label):
    """The row named `label` in the tables: a blueprint, or "single-vm (warm spare)"."""
    return next(r for r in comparison.rows if r.label == label)


WARM, COLD = "single-vm (warm spare)", "single-vm (cold spare)"


def planned(r) -> dict[str, Decimal]:
    """The row's total without its backup bucket's contents (tests/test_costs.py prices those):
    whether a stack file in stacks/ sets blueprints:backupBucket is not this module's concern."""
    totals: dict[str, Decimal] = {}
    storage = costs.backup_storage_lines(r.cost)
    for line in r.cost.lines:
        if line not in storage:
            totals[line.currency] = totals.get(line.currency, D(0)) + line.amount
    return totals


# ----------------------------------------------------------------------------- cost


def test_hcloud_cost_is_the_price_table_times_the_planned_resources(hcloud):
    # Hand-computed for examples/app.yaml from blueprints/prices.yaml (hcloud, net EUR):
    # cx23 2.99, primary IPv4 0.50, floating IPv4 3.00, volume 0.044/GB, lb11 5.39. The data
    # volume is pgdata's 20 GB + 1 GB for TLS state = 21 GB. (Backups go to the stack's bucket,
    # priced in tests/test_costs.py; no rung turns on Hetzner's server backups.)
    volume = D(21) * D("0.044")
    # primary + spare, their IPv4s, the floating IP, the volume: the same with a warm (running)
    # and a cold (powered-off) spare, as Hetzner bills a powered-off server in full
    single_vm = 2 * D("2.99") + 2 * D("0.50") + D("3.00") + volume
    expected = {
        WARM: single_vm,
        COLD: single_vm,
        # one VM, its IPv4, the floating IP, the volume
        "compose": D("2.99") + D("0.50") + D("3.00") + volume,
        # three nodes and their IPv4s, the volume, the load balancer
        "nomad": 3 * D("2.99") + 3 * D("0.50") + volume + D("5.39"),
        # six nodes and their IPv4s, the ingress load balancer, postgres' 20 GiB claim
        "k8s": 6 * D("2.99") + 6 * D("0.50") + D("5.39") + D(20) * D("0.044"),
    }
    for label, amount in expected.items():
        r = row(hcloud, label)
        assert planned(r) == {"EUR": amount}, label
        assert r.cost.unpriced == ()
    for label in (WARM, COLD):
        assert row(hcloud, label).cost.by_category()["servers"] == 2 * D("2.99")
    assert [r.label for r in hcloud.rows] == [WARM, COLD, "compose", "nomad", "k8s"]


def test_hetzner_server_backups_cost_a_share_of_the_server():
    server = {"serverType": "cx23", "location": "fsn1", "backups": True}
    summary = costs.price_resources([("hcloud:index/server:Server", "vm", server)])
    backups = [(line.amount, line.detail) for line in summary.lines if line.category == "backups"]
    assert backups == [(D("2.99") * D("0.2"), "20% backups")]


def test_aws_cost_bills_a_cold_spare_for_its_disk_only(localstack):
    # eu-central-1 USD: t3.medium 0.048/h, public IPv4 0.005/h, gp3 0.0952/GB-month, 730 h.
    hours = D(730)
    r = row(localstack, COLD)
    running = D("0.048") * hours  # the primary; its Elastic IP replaces the auto-assigned IPv4
    eip = D("0.005") * hours
    disks = 2 * D(20) * D("0.0952") + D(21) * D("0.0952")  # two root volumes + data
    assert planned(r) == {"USD": running + eip + disks}
    spare = [line for line in r.cost.lines if line.resource.endswith("-spare")]
    assert {line.category: line.amount for line in spare} == {
        "servers": D(0),
        "volumes": D(20) * D("0.0952"),
    }
    ips = [line.resource for line in r.cost.lines if line.category == "ips"]
    assert ips == ["shop-single-vm-localstack-ip"]  # one address billed, not two


def test_aws_cost_bills_a_warm_spare_as_a_running_instance(localstack):
    # The warm spare runs: its compute and its auto-assigned public IPv4 are billed too.
    hours = D(730)
    warm, cold = row(localstack, WARM), row(localstack, COLD)
    spare = {
        line.category: line.amount for line in warm.cost.lines if line.resource.endswith("-spare")
    }
    assert spare == {
        "servers": D("0.048") * hours,
        "ips": D("0.005") * hours,
        "volumes": D(20) * D("0.0952"),
    }
    assert planned(warm)["USD"] - planned(cold)["USD"] == (D("0.048") + D("0.005")) * hours


def test_cost_rows_show_both_spare_modes(hcloud, localstack):
    for comparison, currency in ((hcloud, "EUR"), (localstack, "USD")):
        cells = {c["blueprint"]: c for c in compare_output.cost_rows(comparison)}
        for label in (WARM, COLD):
            r = row(comparison, label)
            assert cells[label]["per month"] == costs.money(r.monthly, currency)
            assert cells[label]["servers"] == costs.money(r.cost.by_category()["servers"], currency)
    # the stack's own mode is named on the row planned with it
    assert row(hcloud, WARM).notes[0] == (
        "the stack runs a warm spare (blueprints:spareMode unset: the hcloud default)"
    )
    assert row(localstack, WARM).notes[0].startswith("planned with blueprints:spareMode: warm;")


def test_aws_region_outside_the_table_is_flagged():
    summary = costs.price_resources(
        [("aws:ebs/volume:Volume", "v", {"size": 10, "availabilityZone": "us-east-1a"})]
    )
    assert summary.total == {}
    assert summary.unpriced == ("v: region us-east-1 is not in the price table (eu-central-1)",)


def test_aws_snapshots_are_priced_on_the_volume_the_dlm_policy_targets(localstack):
    r = row(localstack, "compose")
    backups = [line for line in r.cost.lines if line.detail.startswith("snapshots")]
    assert [(line.resource, line.amount) for line in backups] == [
        ("shop-compose-localstack-data", D(21) * D("0.054"))
    ]


def test_unknown_server_type_is_reported_not_guessed():
    summary = costs.price_resources(
        [("hcloud:index/server:Server", "big", {"serverType": "ccx63", "location": "fsn1"})]
    )
    assert summary.total == {}
    assert summary.unpriced == ("big: server type ccx63 is not in the price table",)
    outside = costs.price_resources(
        [("hcloud:index/server:Server", "us", {"serverType": "cx23", "location": "ash"})]
    )
    assert "location ash is not in the price table" in outside.unpriced[0]


def test_free_resources_cost_nothing():
    summary = costs.price_resources(
        [
            ("hcloud:index/network:Network", "net", {"ipRange": "10.0.0.0/16"}),
            ("hcloud:index/firewall:Firewall", "fw", {}),
            ("random:index/randomPassword:RandomPassword", "pw", {}),
        ]
    )
    assert summary.lines == () and summary.unpriced == ()


# ----------------------------------------------------------------------------- live prices


PRICING = {
    "pricing": {
        "currency": "EUR",
        "vat_rate": "19.00",
        "image": {"price_per_gb_month": {"net": "0.0150", "gross": "0.0179"}},
        "volume": {"price_per_gb_month": {"net": "0.0600", "gross": "0.0714"}},
        "server_backup": {"percentage": "20.00"},
        "floating_ips": [
            {
                "type": "ipv4",
                "prices": [{"location": "fsn1", "price_monthly": {"net": "4.0000"}}],
            }
        ],
        "primary_ips": [
            {
                "type": "ipv4",
                "prices": [
                    {
                        "location": "fsn1",
                        "price_hourly": {"net": "0.0010"},
                        "price_monthly": {"net": "0.7000"},
                    }
                ],
            }
        ],
        "server_types": [
            {
                "id": 1,
                "name": "cx23",
                "prices": [{"location": "fsn1", "price_monthly": {"net": "3.9900"}}],
            }
        ],
        "load_balancer_types": [
            {
                "id": 1,
                "name": "lb11",
                "prices": [{"location": "fsn1", "price_monthly": {"net": "6.0000"}}],
            }
        ],
    }
}
SERVER_TYPES = {
    "server_types": [
        {
            "id": 1,
            "name": "cx23",
            "description": "CX23",
            "cores": 2,
            "memory": 4.0,
            "disk": 40,
            "prices": [],
            "storage_type": "local",
            "cpu_type": "shared",
            "architecture": "x86",
            "deprecation": None,
        }
    ],
    "meta": {"pagination": {"page": 1, "per_page": 50, "next_page": None, "last_page": 1}},
}


@pytest.fixture
def pricing_api():
    class Handler(BaseHTTPRequestHandler):
        status = 200

        def do_GET(self):
            if self.headers.get("Authorization") != "Bearer good":
                body, code = {"error": {"code": "unauthorized", "message": "bad token"}}, 401
            elif self.path.startswith("/v1/pricing"):
                body, code = PRICING, 200
            elif self.path.startswith("/v1/server_types"):
                body, code = SERVER_TYPES, 200
            else:
                body, code = {"error": {"code": "not_found", "message": "no"}}, 404
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()
    thread.join()


def test_live_prices_replace_the_shipped_table(pricing_api):
    table = costs.live_hcloud_table("good", pricing_api)
    assert table.as_of == "live"
    assert table.server_types["cx23"].price == D("3.9900")
    summary = costs.price_resources(
        [
            ("hcloud:index/server:Server", "vm", {"serverType": "cx23", "location": "fsn1"}),
            ("hcloud:index/volume:Volume", "data", {"size": 10, "location": "fsn1"}),
        ],
        {**costs.shipped_tables(), "hcloud": table},
    )
    assert summary.total == {"EUR": D("3.9900") + D("0.7000") + 10 * D("0.0600")}


def test_live_prices_errors_are_one_sentence(pricing_api, monkeypatch):
    with pytest.raises(costs.PriceError, match="refused the request"):
        costs.live_hcloud_table("bad", pricing_api)
    res = CliRunner().invoke(
        app, ["compare", "--live-prices", "-C", str(ROOT)], env={"HCLOUD_TOKEN": ""}
    )
    assert res.exit_code == 2
    assert "--live-prices needs HCLOUD_TOKEN" in res.output
    monkeypatch.setenv("HCLOUD_TOKEN", "good")
    monkeypatch.setenv("HCLOUD_ENDPOINT", pricing_api)
    res = CliRunner().invoke(app, ["compare", "--live-prices", "-f", "json", "-C", str(ROOT)])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout[res.stdout.index("{") :])
    assert data["prices"][0]["as_of"] == "live"


# ----------------------------------------------------------------------------- failure model


def settings(**kw) -> StackSettings:
    return StackSettings.model_validate(kw)


APP = load_spec(ROOT / "examples/app.yaml")


def expected_recovery(cloud: str, spare: str, interval=5, failures=3, timeout=3) -> float:
    """The single-VM model as documented, from CLOUD_TIMES and the example app (web's health
    check every 10 s)."""
    t = CLOUD_TIMES[cloud]
    # the primary dies just after a good probe; a cycle starts every interval, or when the
    # previous one ends
    detect = interval + (failures - 1) * max(interval, timeout) + timeout
    host_checks = timeout  # public address, private network, floating IP at once
    # the promotion's calls: lock (clock, create, read back) 3, first read 1, 4 before each of
    # six steps, a read after the power-off 1; the settle; its probe of the hung primary
    promotion = (3 + 1 + 6 * 4 + 1) * t["api"] + 0.5 + timeout
    moves = t["power_off"] + t["detach"] + t["attach"]
    if spare == "cold":  # the spare boots while the primary is fenced; it pulls the images
        moves = max(t["boot"], moves) + t["pull"]
    return detect + host_checks + promotion + moves + t["app_start"] + 10 + t["ip_move"]


@pytest.mark.parametrize("target", ["hcloud", "aws", "localstack"])
@pytest.mark.parametrize("spare", ["warm", "cold"])
def test_single_vm_recovery_per_spare_mode_and_cloud(target, spare):
    s = settings(blueprint="single-vm", target=target, spareMode=spare)
    model = failure_model(s, APP)
    assert model.worst.dies == "primary"
    assert model.worst.seconds == pytest.approx(expected_recovery(s.cloud, spare), abs=0.05)
    assert model.worst == single_vm_recovery(s, APP)
    whats = [step.what for step in model.worst.steps]
    assert any("boots" in w for w in whats) is (spare == "cold")
    assert any("pulled" in w for w in whats) is (spare == "cold")


def test_cold_costs_the_boot_and_the_pull():
    for cloud in ("hcloud", "aws"):
        warm, cold = (
            single_vm_recovery(settings(blueprint="single-vm", target=cloud, spareMode=m), APP)
            for m in ("warm", "cold")
        )
        assert cold.seconds > warm.seconds
    # the spare mode defaults to the cloud's: warm on hcloud, cold on aws
    for target, spare in (("hcloud", "warm"), ("aws", "cold"), ("localstack", "cold")):
        s = settings(blueprint="single-vm", target=target)
        assert single_vm_recovery(s, APP) == single_vm_recovery(
            settings(blueprint="single-vm", target=target, spareMode=spare), APP
        )


@pytest.mark.parametrize("spare", ["warm", "cold"])
def test_single_vm_recovery_follows_the_watchdog_settings(spare):
    base = failure_model(settings(blueprint="single-vm", target="hcloud", spareMode=spare), APP)
    slower = failure_model(
        settings(
            blueprint="single-vm",
            target="hcloud",
            spareMode=spare,
            watchInterval=10,
            watchFailures=4,
            probeTimeout=5,
        ),
        APP,
    )
    # detection = interval x failures + probe timeout, then the host checks and the
    # promotion's probe of the primary wait one probe timeout each; the rest is unchanged
    assert slower.worst.seconds - base.worst.seconds == pytest.approx(
        (10 * 4 + 5 + 5 + 5) - (5 * 3 + 3 + 3 + 3)
    )
    assert slower.worst.seconds == pytest.approx(
        expected_recovery("hcloud", spare, interval=10, failures=4, timeout=5), abs=0.05
    )


def test_a_probe_slower_than_the_interval_slows_the_watchdog():
    # a cycle starts when the previous one ends: probes 4s apart, not 2s
    s = settings(blueprint="single-vm", target="hcloud", watchInterval=2, probeTimeout=4)
    model = single_vm_recovery(s, APP)
    assert model.steps[0].seconds == 2 + 2 * 4 + 4
    assert model.seconds == pytest.approx(expected_recovery("hcloud", "warm", 2, 3, 4), abs=0.05)


def test_measured_operation_times_replace_the_estimates():
    # A drill that measured its own cloud's operations gets the model's figure for them.
    s = settings(blueprint="single-vm", target="hcloud", spareMode="warm")
    measured = {"api": 0.05, "power_off": 0.2, "detach": 0.3, "attach": 0.3, "ip_move": 0.1}
    measured["app_start"] = 7.5
    got = single_vm_recovery(s, APP, measured)
    calls = 29 * 0.05 + 0.5
    moves = 0.2 + 0.3 + 0.3
    # (each step to a tenth of a second)
    expected = 5 * 3 + 3 + 3 + calls + 3 + moves + 7.5 + 10 + 0.1
    assert got.seconds == pytest.approx(expected, abs=0.1)
    with pytest.raises(ValueError, match="unknown cloud operation boto; known: api, "):
        single_vm_recovery(s, APP, {"boto": 1})


def test_nomad_recovery_follows_heartbeat_settings():
    model = failure_model(settings(blueprint="nomad", target="hcloud"), APP)
    slower = failure_model(
        settings(blueprint="nomad", target="hcloud", heartbeatGrace=40, lostAfter=60), APP
    )
    assert slower.best.seconds - model.best.seconds == 30 + 60
    # a server waits up to twice the TTL (TTL plus a random stagger of up to one TTL)
    longer_ttl = failure_model(
        settings(blueprint="nomad", target="hcloud", minHeartbeatTtl=20), APP
    )
    assert longer_ttl.best.seconds - model.best.seconds == 2 * (20 - 10)
    # node-1 holds the data volume and Traefik: losing it needs a person
    assert model.worst.dies == "node-1" and model.worst.seconds is None


def test_k8s_recovery_follows_grace_and_toleration():
    model = failure_model(settings(blueprint="k8s", target="hcloud"), APP)
    worker = next(s for s in model.scenarios if s.dies.startswith("a worker"))
    slower = failure_model(
        settings(
            blueprint="k8s",
            target="hcloud",
            nodeMonitorGracePeriod=50,
            unreachableTolerationSeconds=300,
        ),
        APP,
    )
    worker2 = next(s for s in slower.scenarios if s.dies.startswith("a worker"))
    assert worker2.seconds - worker.seconds == (50 - 30) + (300 - 30)
    assert model.worst.seconds is None  # the StatefulSet's node: manual


def test_a_timeout_in_the_stack_file_changes_the_compared_recovery(tmp_path):
    project = tmp_path / "p"
    project.mkdir()
    for name in ("Pulumi.yaml", "examples"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, project / name)
    (project / "blueprints").mkdir(parents=True)
    shutil.copy(ROOT / "blueprints/program.py", project / "blueprints/program.py")
    (project / "stacks").mkdir()
    stack = yaml.safe_load((ROOT / "stacks/Pulumi.single-vm-hcloud.yaml").read_text())
    (project / "stacks/Pulumi.single-vm-hcloud.yaml").write_text(yaml.safe_dump(stack))
    before = [r.failure.worst.seconds for r in compare("hcloud", project_dir=project).rows]
    stack["config"]["blueprints:watchInterval"] = 20
    (project / "stacks/Pulumi.single-vm-hcloud.yaml").write_text(yaml.safe_dump(stack))
    compared = compare("hcloud", project_dir=project)
    after = [r.failure.worst.seconds for r in compared.rows]
    assert [r.label for r in compared.rows] == [WARM, COLD]
    assert [a - b for a, b in zip(after, before, strict=True)] == pytest.approx([(20 - 5) * 3] * 2)
    # and the drill prints the same figures for the changed stack
    out = drill_output(["--stack", "single-vm-hcloud"], project)
    for r in compared.rows:
        assert drill_figure(out, r.spare) == compare_output.recovery_text(r.failure.worst.seconds)


# ----------------------------------------------------------------------------- the drill


def drill_output(args: list[str], root: Path = ROOT) -> str:
    """What scripts/drill.py prints for args, run in this process."""
    import contextlib
    import io

    spec = importlib.util.spec_from_file_location("drill", ROOT / "scripts/drill.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert module.main(args, root) == 0
    return buffer.getvalue()


def drill_figure(out: str, spare: str) -> str:
    """The drill's 'death to serving' figure for one spare mode, e.g. '66.6 s'."""
    section = out.split(f"  {spare} spare:\n", 1)[1]
    line = next(x for x in section.splitlines() if "death to serving from the spare:" in x)
    return line.split(": ", 1)[1].split(" (", 1)[0]


@pytest.mark.parametrize(("target", "stack"), [("hcloud", "hcloud"), ("localstack", "localstack")])
def test_the_drill_prints_the_figure_compare_prints(request, target, stack):
    comparison = request.getfixturevalue(target)
    out = drill_output(["--stack", f"single-vm-{stack}"])
    table = {r["blueprint"]: r["worst VM loss"] for r in compare_output.summary_rows(comparison)}
    for label, spare in ((WARM, "warm"), (COLD, "cold")):
        seconds = row(comparison, label).failure.worst.seconds
        assert drill_figure(out, spare) == table[label] == compare_output.recovery_text(seconds)
        # each step of the drill's timeline is a step of the model
        steps = row(comparison, label).failure.worst.steps
        section = out.split(f"  {spare} spare:\n", 1)[1]
        for step in steps:
            assert step.what in section


def test_the_drill_refuses_bad_input_in_one_line():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/drill.py"), "--time", "boot=soon"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == (
        "drill.py: error: --time: 'boot=soon' is not NAME=SECONDS with SECONDS >= 0"
    )
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/drill.py"), "--stack", "compose-hcloud"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.stderr.splitlines()[-1].endswith("compose-hcloud is a compose stack, not single-vm")


def test_the_drill_takes_measured_times_and_checks_the_target():
    out = drill_output(["--spare", "warm", "--time", "power_off=1", "--time", "api=0"])
    assert "cold spare:" not in out
    s = settings(blueprint="single-vm", target="hcloud", spareMode="warm")
    model = single_vm_recovery(s, APP, {"power_off": 1, "api": 0})
    assert drill_figure(out, "warm") == compare_output.recovery_text(model.seconds)
    assert "power_off 1s (given)" in out
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/drill.py"), "--spare", "cold", "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    over = single_vm_recovery(
        settings(blueprint="single-vm", target="hcloud", spareMode="cold"), APP
    )
    assert over.seconds is not None and over.seconds >= 60
    assert proc.returncode == 1 and "over the 60 s target" in proc.stdout


# ----------------------------------------------------------------------------- counted parts


def test_moving_parts_are_counted_from_rendered_files():
    unit = "[Service]\nType={}\nExecStart=/bin/true\n"
    files = {
        "vm/user-data.yaml": "packages: [docker.io, curl]\n",
        "vm/etc/systemd/system/app.service": unit.format("simple"),
        "vm/etc/systemd/system/setup.service": unit.format("oneshot"),
        "vm/etc/systemd/system/backup.timer": "[Timer]\nOnCalendar=daily\n",
        "vm/etc/blueprints/compose/compose.yaml": "services: {web: {}, db: {}}\n",
        "vm2/etc/systemd/system/app.service": unit.format("simple"),  # same unit: once
    }
    assert [(p.kind, p.name) for p in moving_parts(files)] == [
        ("container", "db"),
        ("container", "web"),
        ("daemon", "app"),
        ("daemon", "dockerd (with containerd)"),
        ("scheduled job", "backup"),
    ]


def test_a_shared_volume_is_priced_once():
    """A volume several services mount is one claim of its own (not one per user); a volume
    one service mounts is its StatefulSet's claim template."""
    from blueprints.compare import claimed_volumes
    from blueprints.rungs.k8s import release as rel

    app = load_spec(ROOT / "tests/everything/app.yaml")
    assert list(app.shared_volumes()) == ["uploads"]
    text = yaml.safe_dump_all(rel.app_objects(app, "hcloud"))
    claims = claimed_volumes({"release/k8s/app.yaml": text})
    assert claims == {
        "pgdata-postgres-0": app.volumes["pgdata"].size_gb,
        "uploads-shared": app.volumes["uploads"].size_gb,
    }


def test_k3s_packaged_components_follow_the_disable_list():
    files = {
        "cp/etc/systemd/system/k3s.service": "[Service]\nType=notify\n",
        "cp/etc/rancher/k3s/config.yaml": "disable: [traefik, servicelb]\n",
        "w/etc/systemd/system/k3s-agent.service": "[Service]\nType=notify\n",
        "w/etc/rancher/k3s/config.yaml": "server: https://10.0.1.10:6443\n",
    }
    names = {p.name for p in moving_parts(files)}
    assert "traefik (packaged with k3s)" not in names
    assert "coredns (packaged with k3s)" in names
    assert {"k3s", "k3s-agent"} <= names


def test_each_rung_has_its_own_parts(hcloud):
    kinds = {r.label: {p.kind for p in r.parts} for r in hcloud.rows}
    assert "run separately" in kinds[WARM] and "run separately" in kinds[COLD]  # the watchdog
    assert "container" in kinds["compose"]
    assert "nomad task" in kinds["nomad"]
    assert {"workload", "add-on"} <= kinds["k8s"]
    assert [r.vms for r in hcloud.rows] == [2, 2, 1, 3, 6]
    assert all(r.config_lines > 100 for r in hcloud.rows)


# ----------------------------------------------------------------------------- formats


def test_every_format_renders(hcloud):
    data = json.loads(compare_output.to_json(hcloud))
    assert [(b["blueprint"], b["spare"]) for b in data["blueprints"]] == [
        ("single-vm", "warm"),
        ("single-vm", "cold"),
        ("compose", None),
        ("nomad", None),
        ("k8s", None),
    ]
    assert data["prices"][0]["as_of"] == "2025-10"
    assert data["blueprints"][1]["cost"]["monthly"] == str(row(hcloud, COLD).monthly)
    cold = data["blueprints"][1]["failure"]["worst"]
    assert cold["seconds"] == row(hcloud, COLD).failure.worst.seconds

    md = compare_output.to_markdown(hcloud)
    assert md.startswith("## shop: the four blueprints on hcloud\n")
    # capacity: what serves the app, not the spare
    assert "| single-vm (warm spare) | single-vm-hcloud | 2 | 1 of 2 | 2 | 4 GiB |" in md
    assert "| single-vm (cold spare) | single-vm-hcloud | 2 | 1 of 2 | 2 | 4 GiB |" in md
    assert "| k8s | k8s-hcloud | 6 | 3 of 6 | 6 | 12 GiB |" in md
    assert "node-1 dies: manual" in md

    page = compare_output.to_html(hcloud)
    parser = HTMLParser()
    parser.feed(page)
    assert page.count("<table>") == 2 and "<svg" in page and "EUR 10.90" in page


def test_the_table_format_through_the_cli():
    res = CliRunner().invoke(app, ["compare", "-C", str(ROOT)], env={"COLUMNS": "160"})
    assert res.exit_code == 0, res.output
    assert "EUR 10.90" in res.stdout and "manual" in res.stdout
    assert "as of 2025-10" in res.stdout


def test_output_is_deterministic(hcloud):
    again = compare("hcloud", project_dir=ROOT)
    assert compare_output.to_json(again) == compare_output.to_json(hcloud)
    assert compare_output.chart_bytes(again, ".svg") == compare_output.chart_bytes(hcloud, ".svg")


def test_chart_is_a_valid_svg_and_png(tmp_path, hcloud):
    svg = tmp_path / "ladder.svg"
    png = tmp_path / "ladder.png"
    for path in (svg, png):
        res = CliRunner().invoke(app, ["compare", "-C", str(ROOT), "--chart", str(path)])
        assert res.exit_code == 0, res.output
    root = ET.parse(svg).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert "single-vm" in svg.read_text()
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width == 1000 and height >= 400
    from PIL import Image

    Image.open(png).verify()
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "gcp"], "--target: unknown target 'gcp'; allowed: hcloud, localstack, aws"),
        (["--format", "xml"], "--format: unknown format 'xml'; allowed: table, markdown"),
        (["--chart", "x.jpg"], "--chart: x.jpg must end in .svg or .png"),
        (["--chart", "/nonexistent/dir/c.svg"], "--chart: directory /nonexistent/dir"),
        (["--spec", "nope.yaml"], "--spec: nope.yaml does not exist"),
    ],
)
def test_bad_arguments_get_one_line(args, message):
    res = CliRunner().invoke(app, ["compare", "-C", str(ROOT), *args])
    assert res.exit_code == 2
    assert message in res.output
    assert "Traceback" not in res.output


def test_a_bad_spec_is_reported_with_its_field(tmp_path):
    bad = tmp_path / "app.yaml"
    bad.write_text((ROOT / "examples/app.yaml").read_text().replace("replicas: 2", "replicas: -1"))
    res = CliRunner().invoke(app, ["compare", "-C", str(ROOT), "--spec", str(bad)])
    assert res.exit_code == 2
    assert "replicas" in res.output and "Traceback" not in res.output


def test_a_spec_option_changes_what_is_compared(tmp_path):
    bigger = tmp_path / "app.yaml"
    text = (ROOT / "examples/app.yaml").read_text().replace("size_gb: 20", "size_gb: 100")
    bigger.write_text(text)
    result = compare("hcloud", project_dir=ROOT, spec=bigger)
    # 100 GB + 1 GB on the single-VM volume instead of 21 GB
    delta = row(result, WARM).monthly - D("10.904")
    assert delta == D(80) * D("0.044")


def test_no_stacks_for_the_target(tmp_path):
    (tmp_path / "Pulumi.yaml").write_text("name: x\nruntime: python\nstackConfigDir: stacks\n")
    (tmp_path / "stacks").mkdir()
    with pytest.raises(CompareError, match="no stack with target aws in stacks/"):
        compare("aws", project_dir=tmp_path)


# ----------------------------------------------------------------------------- README copy

BEGIN, END = "<!-- compare:begin -->\n", "<!-- compare:end -->\n"


def test_readme_shows_the_current_comparison(hcloud, update_golden):
    """The README's rendered comparison and chart are the code's output for the example app."""
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    current = compare_output.to_markdown(hcloud, level=3)
    chart = ROOT / "docs/compare-hcloud.svg"
    svg = compare_output.chart_bytes(hcloud, ".svg")
    if update_golden:
        readme.write_text(text[:start] + current + text[end:])
        chart.write_bytes(svg)
        return
    assert text[start:end] == current, "README comparison is stale: pytest --update-golden"
    assert chart.read_bytes() == svg, "docs/compare-hcloud.svg is stale: pytest --update-golden"


def test_aws_without_aws_stacks_compares_the_localstack_ones(localstack):
    result = compare("aws", project_dir=ROOT)
    assert [r.stack for r in result.rows] == [r.stack for r in localstack.rows]
    assert [r.monthly for r in result.rows] == [r.monthly for r in localstack.rows]
    assert any("no aws stack; compared single-vm-localstack" in n for n in result.rows[0].notes)


def test_secret_or_unknown_inputs_are_reported_not_crashed_on():
    # A preview document carries "[secret]" and not-yet-known values where numbers belong.
    summary = costs.price_resources(
        [
            ("hcloud:index/server:Server", "vm", {"serverType": "cx23", "publicNets": "[secret]"}),
            ("hcloud:index/volume:Volume", "data", {"size": "[secret]"}),
            ("aws:ec2/instance:Instance", "i", {"instanceType": "t3.small", "rootBlockDevice": 7}),
            ("aws:ebs/volume:Volume", "v", {"size": 10, "type": "gp3", "tags": "[secret]"}),
            ("aws:dlm/lifecyclePolicy:LifecyclePolicy", "p", {"policyDetails": "[secret]"}),
        ]
    )
    assert summary.total == {"EUR": D("2.99"), "USD": D("0.024") * 730 + 10 * D("0.0952")}
    assert [u.split(":")[0] for u in summary.unpriced] == ["vm", "data", "i"]


def small_project(tmp_path: Path, stacks: dict[str, str]) -> Path:
    """A project with the example spec and these stack files (name -> text)."""
    project = tmp_path / "p"
    shutil.copytree(ROOT / "examples", project / "examples")
    shutil.copy(ROOT / "Pulumi.yaml", project / "Pulumi.yaml")
    (project / "blueprints").mkdir()
    shutil.copy(ROOT / "blueprints/program.py", project / "blueprints/program.py")
    (project / "stacks").mkdir()
    for name, text in stacks.items():
        (project / f"stacks/Pulumi.{name}.yaml").write_text(text)
    return project


def test_a_stack_with_bad_settings_is_reported_and_the_others_compared(tmp_path):
    project = small_project(
        tmp_path,
        {
            "compose-hcloud": (ROOT / "stacks/Pulumi.compose-hcloud.yaml").read_text(),
            "nomad-hcloud": "config:\n  blueprints:blueprint: nomad\n  blueprints:target: hcloud\n"
            "  blueprints:heartbeatGrce: 5\n",
            # another target's stack, bad or not, is not this comparison's business
            "nomad-localstack": "config:\n  blueprints:target: localstack\n  blueprints:x: 1\n",
        },
    )
    res = CliRunner().invoke(app, ["compare", "-C", str(project)], env={"COLUMNS": "200"})
    assert res.exit_code == 2
    assert "compose" in res.stdout and "EUR 7.41" in res.stdout
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    (line,) = errors
    assert line.startswith("error: nomad-hcloud: not compared: stacks/Pulumi.nomad-hcloud.yaml")
    assert "blueprints:heartbeatGrce: unknown key" in line
    assert "Traceback" not in res.output


def test_unpriced_resources_mark_the_total_partial(tmp_path):
    """An EC2 type the price table lacks (a Hetzner type must be in it, shipped or live): not
    priced, the total partial, and the capacity not checked; never guessed."""
    project = small_project(
        tmp_path,
        {"compose-localstack": (ROOT / "stacks/Pulumi.compose-localstack.yaml").read_text()},
    )
    shipped = costs.shipped_tables()
    aws = shipped["aws"]
    lacking = dataclasses.replace(
        aws, server_types={k: v for k, v in aws.server_types.items() if k != "t3.medium"}
    )
    result = compare("aws", project_dir=project, tables={**shipped, "aws": lacking})
    (r,) = result.rows
    assert r.vcpu is None and r.fit is not None and r.fit.machine is None
    assert compare_output.summary_rows(result)[0]["per month"].endswith("(partial)")
    md = compare_output.to_markdown(result)
    assert "not priced: shop-compose-localstack-vm: instance type t3.medium" in md
    assert "capacity: not checked: server type t3.medium is not in the price table" in md


# ----------------------------------------------------------------------------- what serves


def test_capacity_counts_only_what_serves(hcloud, localstack):
    """single-vm's spare (warm or cold) and the k8s control planes run no part of the app."""
    for comparison in (hcloud, localstack):
        serving = {r.label: (r.vms, r.serving, r.vcpu, r.memory_gib) for r in comparison.rows}
        assert serving == {
            WARM: (2, 1, 2, D(4)),
            COLD: (2, 1, 2, D(4)),
            "compose": (1, 1, 2, D(4)),
            "nomad": (3, 3, 6, D(12)),
            "k8s": (6, 3, 6, D(12)),
        }
        for r in comparison.rows:
            assert r.fit is not None and r.fit.fits and r.fit.serving == r.serving
    cells = {c["blueprint"]: c for c in compare_output.summary_rows(hcloud)}
    assert (cells[WARM]["serving"], cells["k8s"]["serving"], cells["nomad"]["serving"]) == (
        "1 of 2",
        "3 of 6",
        "3",
    )
    data = json.loads(compare_output.to_json(hcloud))
    k8s = data["blueprints"][4]["capacity"]
    assert (k8s["server_type"], k8s["serving"], k8s["fits"]) == ("cx23", 3, True)
    assert k8s["cpu_needed"] == "2.75" and k8s["memory_needed_mib"] == 2560


# ----------------------------------------------------------------------------- backups apart


def test_backups_are_a_line_of_their_own(localstack):
    """The monthly total prices what runs the app on every row alike; backups (the bucket's
    restic repository, and compose's EBS snapshots on AWS) are their own line, shown the same
    way on every row."""
    bucket = set()
    for r in localstack.rows:
        running = sum((line.amount for line in r.cost.lines if line.category != "backups"), D(0))
        assert r.monthly == running
        assert r.monthly + r.backups == r.with_backups == sum(r.cost.total.values())
        storage = costs.backup_storage_lines(r.cost)
        assert len(storage) == 1
        bucket.add(storage[0].amount)
    assert len(bucket) == 1  # the same repository estimate on every rung: comparable
    cells = {c["blueprint"]: c for c in compare_output.cost_rows(localstack)}
    (amount,) = bucket
    snapshots = D(21) * D("0.054")
    assert cells["compose"]["backups"] == (
        f"{costs.money(amount, 'USD')} bucket + {costs.money(snapshots, 'USD')} snapshots"
    )
    assert cells["nomad"]["backups"] == f"{costs.money(amount, 'USD')} bucket"
    assert "backups" not in [c for c in cells["nomad"] if c not in ("backups", "with backups")]
    compose = row(localstack, "compose")
    assert cells["compose"]["with backups"] == costs.money(
        compose.monthly + amount + snapshots, "USD"
    )


def test_rows_without_backups_say_none(hcloud):
    assert {c["backups"] for c in compare_output.cost_rows(hcloud)} == {"none"}
    assert all(r.monthly == r.with_backups for r in hcloud.rows)


# ----------------------------------------------------------------------------- the chart


def test_the_chart_shows_every_scenario_from_zero_with_a_legend(hcloud):
    from matplotlib import pyplot as plt

    fig = compare_output.chart_figure(hcloud)
    try:
        cost_ax, time_ax = fig.axes
        assert cost_ax.get_xlim()[0] == 0 and time_ax.get_xlim()[0] == 0
        assert 0 in list(time_ax.get_xticks()) and 0 in list(cost_ax.get_xticks())
        texts = [t.get_text().strip() for t in time_ax.texts]
        for r in hcloud.rows:
            for s in r.failure.scenarios:
                assert f"{s.dies}: {compare_output.recovery_text(s.seconds)}" in texts
        scenarios = sum(len(r.failure.scenarios) for r in hcloud.rows)
        assert scenarios > len(hcloud.rows)  # more than the worst case of each
        (legend,) = fig.legends
        labels = [t.get_text() for t in legend.get_texts()]
        assert labels == [r.label for r in hcloud.rows] + ["needs a person"]
    finally:
        plt.close(fig)
    svg = compare_output.chart_bytes(hcloud, ".svg").decode()
    assert "node-1: manual" in svg and "a worker without stateful pods: 80 s" in svg


# ----------------------------------------------------------------------------- per stack


@pytest.fixture(scope="module")
def heavy(tmp_path_factory):
    """The example with a postgres of 1.95 cores: it fits one 2-vCPU machine, not a nomad node
    nor a k8s worker (1.9 cores each, after the agent's and add-ons' share)."""
    data = yaml.safe_load((ROOT / "examples/app.yaml").read_text())
    data["services"]["postgres"]["cpu"] = 1.95
    path = tmp_path_factory.mktemp("heavy") / "app.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_bug_in_one_row_is_that_rows_failure_in_a_worker_or_not(monkeypatch, jobs):
    """An exception nobody expected while one row is planned fails that row, with the same line
    whether the rows plan in this process or in workers; the other rows are compared."""
    import blueprints.compare as compare_module

    real = compare_module._row

    def row(root, blueprint, *args):
        if blueprint == "compose":
            raise KeyError("volumes")
        return real(root, blueprint, *args)

    monkeypatch.setattr(compare_module, "_row", row)
    result = compare("hcloud", project_dir=ROOT, jobs=jobs)
    assert [r.label for r in result.rows] == [WARM, COLD, "nomad", "k8s"]
    [failed] = result.failed
    assert (failed.label, failed.stack) == ("compose", "compose-hcloud")
    assert failed.reason.startswith("unexpected KeyError at ")
    assert failed.reason.endswith(
        ": 'volumes' (a bug in blueprints: please report it with this line)"
    )


def test_a_rung_refusing_the_spec_leaves_the_others_compared(heavy):
    result = compare("hcloud", project_dir=ROOT, spec=heavy)
    assert [r.label for r in result.rows] == [WARM, COLD, "compose"]
    assert [(f.label, f.stack) for f in result.failed] == [
        ("nomad", "nomad-hcloud"),
        ("k8s", "k8s-hcloud"),
    ]
    nomad, k8s = (f.reason for f in result.failed)
    assert nomad == (
        f"stacks/Pulumi.nomad-hcloud.yaml: capacity: {heavy} does not fit: service postgres (one "
        "instance): CPU 1.95 cores needed, 1.9 cores offered by one nomad node (cx23: 2 vCPU, "
        "3891 of 4096 MiB usable, less the 200 MHz and 256 MiB the Nomad client keeps; 2000 MHz "
        "per core)"
    )
    assert "CPU 1.95 cores needed, 1.9 cores offered by one worker (cx23" in k8s
    md = compare_output.to_markdown(result)
    assert "### Not compared" in md and "- nomad (nomad-hcloud): not compared: " in md


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_compare_with_a_refused_spec_shows_the_rest_and_exits_2(heavy, fmt):
    res = CliRunner().invoke(
        app, ["compare", "-C", str(ROOT), "--spec", str(heavy), "-f", fmt], env={"COLUMNS": "200"}
    )
    assert res.exit_code == 2
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert [e.split(": not compared: ")[0] for e in errors] == [
        "error: nomad (nomad-hcloud)",
        "error: k8s (k8s-hcloud)",
    ]
    assert "2 of 5 could not be compared" in res.stderr
    if fmt == "json":
        data = json.loads(res.stdout)
        assert [b["blueprint"] for b in data["blueprints"]] == ["single-vm", "single-vm", "compose"]
        assert [f["stack"] for f in data["failed"]] == ["nomad-hcloud", "k8s-hcloud"]
    else:
        assert "compose" in res.stdout and "EUR 7.41" in res.stdout
        assert "k8s" not in res.stdout.split("monthly cost")[0]


def test_planning_shows_progress():
    res = CliRunner().invoke(app, ["compare", "-C", str(ROOT), "-f", "json"])
    assert res.exit_code == 0, res.output
    assert "comparing the hcloud stacks..." in res.stderr
    for step in (
        "planning single-vm-hcloud with a warm spare...",
        "planning single-vm-hcloud with a cold spare...",
        "planning k8s-hcloud...",
    ):
        assert step in res.stderr


# ----------------------------------------------------------------------------- narrow output

BOX = str.maketrans("", "", "┃│━╇─┡┩┏┓┗┛┳┻╋┼")
NUMBER, UNIT = r"\d+(?:\.\d+)?", r"(?:s|GiB|MiB|cores?|vCPU)\b"
AMOUNT = re.compile(
    rf"(?:EUR|USD) {NUMBER}|{NUMBER} (?:of|x) {NUMBER}(?: {UNIT})?|{NUMBER} {UNIT}"
    r"|\w+ \(\w+ spare\)"
)


def shown(comparison, width: int, terminal: bool) -> str:
    """What the table format prints on a console of this width (a terminal wraps prose at
    words; piped, it does not wrap at all)."""
    import io

    from rich.console import Console

    from blueprints import cli

    buffer = io.StringIO()
    console = Console(
        file=buffer, width=width, force_terminal=terminal, color_system=None, soft_wrap=not terminal
    )
    saved = cli.out
    cli.out = console
    try:
        cli._show_comparison(comparison)
    finally:
        cli.out = saved
    return buffer.getvalue()


def tokens(text: str) -> set[str]:
    return set(text.translate(BOX).split())


@pytest.mark.parametrize("terminal", [False, True])
@pytest.mark.parametrize("target", ["hcloud", "localstack"])
def test_at_80_columns_no_word_or_amount_is_split(request, target, terminal):
    comparison = request.getfixturevalue(target)
    wide = shown(comparison, 400, terminal)
    narrow = shown(comparison, 80, terminal)
    assert "┃" in wide and "┃" not in narrow  # the table at 400 columns, stacked at 80
    # every word of the wide rendering appears whole in the narrow one
    # (but the first column's title: a block is headed by the blueprint itself)
    missing = tokens(wide) - tokens(narrow) - {"blueprint"}
    assert not missing, sorted(missing)
    # and every amount stays on one line
    lines = narrow.splitlines()
    for amount in set(AMOUNT.findall(wide)):
        assert any(amount in line for line in lines), amount
    if terminal:
        assert max(len(line) for line in lines) <= 80


def test_at_80_columns_piped_through_the_command():
    """The real command, its output piped (as in a CI log), COLUMNS=80."""
    env = {**os.environ, "COLUMNS": "80"}
    command = Path(sys.executable).parent / "blueprints"  # the installed entry point
    proc = subprocess.run(
        [str(command), "compare", "-C", str(ROOT)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "┃" not in out and "single-vm (warm spare)\n" in out
    assert "  per month        EUR 10.90\n" in out
    # the blocks fit the width; prose lines (notes, failure effects) are left whole
    block = out.split("single-vm (warm spare):", 1)[0]
    assert max(len(line) for line in block.splitlines()) <= 80


# ----------------------------------------------------------------------------- reading plans


def _accepted(parse, text):
    from blueprints.release.bundle import BundleError

    try:
        return parse(text)
    except BundleError:
        return None


def test_delivered_documents_are_read_as_the_release_bundle_reads_them():
    """stack_files reads a command's stdin once (bundle.parse_delivered): it takes what
    parse_release or parse_secrets takes, the same body, and nothing they refuse (issue 23)."""
    from blueprints.plan import plan_stack
    from blueprints.release import bundle
    from blueprints.release.agent import release_id
    from blueprints.release.bundle import parse_delivered
    from blueprints.render.unpack import COMMAND_TYPE

    plan = plan_stack("compose-hcloud", ROOT)
    texts = [r.plain_inputs().get("stdin") for r in plan.resources if r.type == COMMAND_TYPE]
    release = next(t for t in texts if _accepted(bundle.parse_release, t) is not None)
    body = bundle.parse_release(release)
    # Text a block scalar cannot hold, line breaks YAML knows and keys that look like others.
    tricky = {**body["files"]}
    for i, text in enumerate(["a\x85b", "x\u2028y\u2029z", "trailing \n", "", "yes", "0o17"]):
        tricky[f"/etc/tricky/{i}"] = {"mode": "0644", "text": text}
    tricky_body = {**body, "files": tricky, "true": "1.0", "null": "~"}
    tricky_body["release"] = release_id(tricky_body)
    forged = release.replace(body["release"], "0" * 16)
    candidates = [
        *texts,
        bundle.dump(tricky_body),
        forged,
        release.replace("services:", "servicez:"),
        bundle.secrets_document("k", {"/etc/a": "x"}, {"/etc/a": "0600"})[1],
        "format: blueprints-secrets/1\nfiles: []\n",
        "a: [b\n",
        "- a list\n",
        "",
        None,
        7,
    ]
    seen = set()
    for text in candidates:
        got = parse_delivered(text)
        as_release = _accepted(bundle.parse_release, text)
        as_secrets = _accepted(bundle.parse_secrets, text)
        if as_release is not None:
            assert got == ("release.yaml", as_release)
        elif as_secrets is not None:
            assert got == ("secrets.yaml", as_secrets)
        else:
            assert got is None, text
        seen.add(got[0] if got else None)
    assert seen == {"release.yaml", "secrets.yaml", None}


def test_rendered_files_read_with_libyaml_as_with_pyyaml():
    """compare reads the rendered files with libyaml: the values yaml.safe_load gives."""
    from blueprints.plan import plan_stack
    from blueprints.render.unpack import stack_files
    from blueprints.yaml_text import fast_load

    for stack in ("k8s-hcloud", "nomad-localstack"):
        files = stack_files(plan_stack(stack, ROOT))
        for key, text in files.items():
            if not key.endswith((".yaml", ".yml")):
                continue
            assert list(yaml.load_all(text, Loader=yaml.CSafeLoader)) == list(
                yaml.safe_load_all(text)
            ), key
            if "---" not in text:
                assert fast_load(text) == yaml.safe_load(text), key
