"""The DNS outputs name every domain the proxy serves: a spec routing extra hosts is planned on
every stack, the hosts are read back from the proxy configuration the plan sends (Caddy's JSON in
the release, Traefik's router rules in the Nomad jobs, the Ingress on k8s), and `dnsRecord` must
hold a record for each of them, and for nothing else but the app's domain."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import pytest
from spec_plans import EXAMPLE, ROOT, plan_with_spec

from blueprints.dns import APEX_NOTE, dns_record, dns_records, served_domains
from blueprints.plan import Plan, list_stacks
from blueprints.release.bundle import parse_release
from blueprints.render.single_vm import CADDY_CONFIG
from blueprints.rungs.nomad.release import INGRESS_JOB
from blueprints.spec import parse_spec

STACKS = sorted(list_stacks(ROOT))
COMMAND = "command:remote:Command"
JOB = "nomad:index/job:Job"
EXTRA = {"www.shop.example.com", "admin.example.org"}


def extra_hosts(data: dict[str, Any]) -> None:
    """The web service also answers www. of the domain, and another domain's /api."""
    data["services"]["web"]["ports"] += [
        {"port": 8001, "expose": "http", "host": "www.shop.example.com"},
        {"port": 8002, "expose": "http", "host": "admin.example.org", "path": "/api"},
    ]


@pytest.fixture(scope="module")
def plans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Plan]:
    tmp = tmp_path_factory.mktemp("dns")
    return {stack: plan_with_spec(stack, tmp, extra_hosts) for stack in STACKS}


def caddy_hosts(plan: Plan) -> set[str]:
    """The hosts of Caddy's routes, in the release document the plan sends to the node."""
    [release] = [r for r in plan.of_type(COMMAND) if r.name.endswith("-release")]
    doc = parse_release(release.plain_inputs()["stdin"])
    config = json.loads(doc["files"][CADDY_CONFIG]["text"])
    return {
        host
        for server in config["apps"]["http"]["servers"].values()
        for route in server["routes"]
        for match in route["match"]
        for host in match["host"]
    }


def traefik_hosts(plan: Plan) -> set[str]:
    """The hosts of Traefik's routers: the Host(`...`) rules in the jobs' service tags."""
    hosts: set[str] = set()
    for job in plan.of_type(JOB):
        for rule in re.findall(r"routers\.[^.]+\.rule=([^\"]+)", job.plain_inputs()["jobspec"]):
            hosts.update(re.findall(r"Host\(`([^`]+)`\)", rule))
    return hosts


def ingress(plan: Plan) -> dict[str, Any]:
    [found] = [
        r.plain_inputs()
        for r in plan.resources
        if r.type.startswith("kubernetes:") and r.inputs.get("kind") == "Ingress"
    ]
    return found


def ingress_hosts(plan: Plan) -> set[str]:
    """The Ingress's rules, and the hosts of its TLS section (cert-manager's certificate)."""
    spec = ingress(plan)["spec"]
    rules = {rule["host"] for rule in spec["rules"]}
    assert rules == {host for tls in spec["tls"] for host in tls["hosts"]}
    return rules


def served_by_proxy(stack: str, plan: Plan) -> set[str]:
    if stack.startswith(("single-vm-", "compose-")):
        return caddy_hosts(plan)
    if stack.startswith("nomad-"):
        return traefik_hosts(plan)
    return ingress_hosts(plan)


def records(out: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The records of `dnsRecord`; after CNAME records (and only then), the apex note closes it."""
    lines = out["dnsRecord"].split("\n")
    if lines[-1] == APEX_NOTE:
        lines.pop()
        assert any(line.split(" ")[1:2] == ["CNAME"] for line in lines)
    parsed = [tuple(line.split(" ")) for line in lines]
    assert all(len(p) == 3 for p in parsed), lines
    return parsed  # type: ignore[return-value]


@pytest.mark.parametrize("stack", STACKS)
def test_dns_record_names_every_domain_the_proxy_serves(plans, stack):
    plan = plans[stack]
    served = served_by_proxy(stack, plan)
    assert served >= EXTRA  # the spec's hosts did reach the proxy
    out = plan.public_outputs()
    found = records(out)
    names = [name.removesuffix(".") for name, _, _ in found]
    assert names == sorted(names) and len(set(names)) == len(names)
    assert set(names) == served | {"shop.example.com"}
    # every record points at the stack's one public address, by its kind
    targets = {(kind, target) for _, kind, target in found}
    assert len(targets) == 1
    [(kind, target)] = targets
    try:
        ip = ipaddress.ip_address(target)
    except ValueError:
        assert kind == "CNAME" and target.endswith(".")
    else:
        assert kind == ("A" if ip.version == 4 else "AAAA")


@pytest.mark.parametrize("stack", STACKS)
def test_retry_certificates_names_what_the_stack_runs(plans, stack):
    plan = plans[stack]
    command = plan.public_outputs()["retryCertificates"]
    if stack.startswith("k8s-"):
        meta, spec = ingress(plan)["metadata"], ingress(plan)["spec"]
        [tls] = spec["tls"]
        assert command == (
            f"kubectl --namespace {meta['namespace']} delete certificate {tls['secretName']}"
        )
    elif stack.startswith("nomad-"):
        jobs = [j.plain_inputs()["jobspec"] for j in plan.of_type(JOB)]
        assert any(f'job "{INGRESS_JOB}"' in spec for spec in jobs)
        assert command == f"nomad job restart -yes {INGRESS_JOB}"
    else:
        assert re.fullmatch(r"ssh deploy@\S+ sudo \S+ restart \S+", command), command


def test_a_spec_without_extra_hosts_keeps_one_line():
    app = parse_spec(EXAMPLE)
    assert served_domains(app) == ["shop.example.com"]
    assert dns_records(app, "203.0.113.7") == "shop.example.com. A 203.0.113.7"


def test_a_load_balancer_name_comes_with_the_apex_note():
    """A CNAME may not sit at a zone apex, and which domain is one cannot be known here: the
    output says what to do there, once, as a zone-file comment."""
    app = parse_spec(EXAMPLE)
    assert dns_records(app, "lb-1.elb.example") == (
        f"shop.example.com. CNAME lb-1.elb.example.\n{APEX_NOTE}"
    )
    assert APEX_NOTE.startswith("; ") and "\n" not in APEX_NOTE
    assert "ALIAS/ANAME" in APEX_NOTE and "Route 53" in APEX_NOTE
    assert APEX_NOTE not in dns_records(app, "2001:db8::1")


@pytest.mark.parametrize("stack", STACKS)
def test_the_apex_note_follows_cname_records_only(plans, stack):
    text = plans[stack].public_outputs()["dnsRecord"]
    kinds = {kind for _, kind, _ in records(plans[stack].public_outputs())}
    assert text.endswith("\n" + APEX_NOTE) is (kinds == {"CNAME"})
    assert text.count(APEX_NOTE) == (1 if kinds == {"CNAME"} else 0)


def test_record_kinds():
    assert dns_record("a.example.com", "2001:db8::1") == "a.example.com. AAAA 2001:db8::1"
    assert (
        dns_record("a.example.com", "lb-1.elb.example.") == "a.example.com. CNAME lb-1.elb.example."
    )
    assert (
        dns_record("a.example.com", "lb-1.elb.example") == "a.example.com. CNAME lb-1.elb.example."
    )


def test_every_stack_is_covered():
    assert {s.split("-")[0] for s in STACKS} >= {"single", "compose", "nomad", "k8s"}
    assert len(STACKS) >= 8
    assert Path(ROOT / "stacks").is_dir()
