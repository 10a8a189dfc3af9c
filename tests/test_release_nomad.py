"""Principle 9 on the nomad plans: an app change is an update of one job through Nomad's API and
never touches a node; admin keys travel over SSH; a machine change replaces the nodes one after
another, each waited for before the next."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from spec_plans import EXAMPLE, inputs_of, plan_with_spec

from blueprints.plan import Plan, PlanError, is_secret, plan_stack
from blueprints.rungs.nomad.bootstrap import INSTALL_NODE_READY, NODE_READY, node_ready_source

ROOT = Path(__file__).resolve().parent.parent
STACKS = ["nomad-hcloud", "nomad-localstack"]
SERVER = {"hcloud": "hcloud:index/server:Server", "aws": "aws:ec2/instance:Instance"}
USER_DATA = {"hcloud": "userData", "aws": "userDataBase64"}
COMMAND = "command:remote:Command"
JOB = "nomad:index/job:Job"
VARIABLE = "nomad:index/variable:Variable"
NEW_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBn7Yz2c9q0kJx4mA8rVtW3pLsE6uHdN1fGiKoQ2bR5y new@x"


def _image_bump(data: dict) -> None:
    data["services"]["web"]["image"] = "ghcr.io/example/shop-web:1.4.3"


def _env_value(data: dict) -> None:
    data["services"]["web"]["env"]["LOG_LEVEL"] = "debug"


def _replicas(data: dict) -> None:
    data["services"]["web"]["replicas"] = 3


def _admin_key(data: dict) -> None:
    data["admin"]["ssh_keys"].append(NEW_KEY)


def cloud(stack: str) -> str:
    return "hcloud" if stack.endswith("hcloud") else "aws"


def _changed(before: Plan, after: Plan) -> list[str]:
    old, new = inputs_of(before), inputs_of(after)
    assert set(old) == set(new)
    return sorted(name for name in old if old[name] != new[name])


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Plan]:
    tmp = tmp_path_factory.mktemp("base")
    return {stack: plan_with_spec(stack, tmp) for stack in STACKS}


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("change", [_image_bump, _env_value, _replicas])
def test_a_change_of_web_updates_web_s_job_only(bases, tmp_path, stack, change):
    after = plan_with_spec(stack, tmp_path, change)
    assert _changed(bases[stack], after) == [f"shop-{stack}-job-web"]
    job = inputs_of(after)[f"shop-{stack}-job-web"]
    assert job["detach"] is False  # pulumi up waits for the deployment and fails with it


@pytest.mark.parametrize("stack", STACKS)
def test_an_admin_key_goes_over_ssh_to_every_node_and_replaces_nothing(bases, tmp_path, stack):
    after = plan_with_spec(stack, tmp_path, _admin_key)
    readies = [f"shop-{stack}-node-{i}-ready" for i in (1, 2, 3)]
    assert _changed(bases[stack], after) == readies
    for name in readies:
        document = json.loads(inputs_of(after)[name]["stdin"])
        assert document["admin_keys"].splitlines()[-1] == NEW_KEY
        assert set(document) == {"admin_keys", "ca", "cert", "gossip_key", "key", "token"}


SECRETS = {"DATABASE_PASSWORD": "db-1", "DJANGO_SECRET_KEY": "dj-1", "POSTGRES_PASSWORD": "pg-1"}


def test_a_new_secret_value_is_a_deployment_of_the_jobs_that_read_it(tmp_path):
    """DJANGO_SECRET_KEY is read by web and worker: their Variables and their jobs change (a
    keyed digest in the job's meta), nothing else; the jobspec stays readable."""
    stack = "nomad-hcloud"
    before = plan_with_spec(stack, tmp_path, None, **{"blueprints:secrets": SECRETS})
    after = plan_with_spec(
        stack, tmp_path, None, **{"blueprints:secrets": {**SECRETS, "DJANGO_SECRET_KEY": "dj-2"}}
    )
    assert _changed(before, after) == [
        f"shop-{stack}-job-web",
        f"shop-{stack}-job-worker",
        f"shop-{stack}-secrets-web",
        f"shop-{stack}-secrets-worker",
    ]
    job = next(r for r in after.resources if r.name == f"shop-{stack}-job-web")
    assert not is_secret(job.inputs["jobspec"])
    spec = job.public_inputs()["jobspec"]
    assert "blueprints_secrets = " in spec and "dj-2" not in spec and "db-1" not in spec


@pytest.mark.parametrize("stack", STACKS)
def test_the_ready_script_travels_over_ssh_before_each_ready_step(bases, stack):
    plan = bases[stack]
    by_name = {r.name: r for r in plan.resources}
    for i in (1, 2, 3):
        script = by_name[f"shop-{stack}-node-{i}-ready-script"]
        inputs = script.plain_inputs()
        assert inputs["stdin"] == node_ready_source()
        assert inputs["create"].endswith(f"sudo {INSTALL_NODE_READY}")
        assert (
            inputs["triggers"] == by_name[f"shop-{stack}-node-{i}-ready"].plain_inputs()["triggers"]
        )
        assert script.name in by_name[f"shop-{stack}-node-{i}-ready"].depends_on


@pytest.mark.parametrize("stack", STACKS)
def test_user_data_is_the_bootstrap_only(bases, stack):
    """No job, no app secret, no admin key in any node's user data."""
    plan = bases[stack]
    for server in plan.of_type(SERVER[cloud(stack)]):
        from blueprints.render.unpack import server_user_data

        text = server_user_data(server)
        assert text is not None
        for app_value in ("shop-web", "ghcr.io", "ops@example.com", "job "):
            assert app_value not in text, (server.name, app_value)
        # no secret at all: no app secret, token, gossip key or key material
        assert "<secret:" not in text and "OFFLINE-" not in text, server.name
        assert EXAMPLE["admin"]["ssh_keys"][0].split()[1] not in text


@pytest.mark.parametrize("stack", STACKS)
def test_nodes_are_created_and_replaced_one_after_another(bases, stack):
    """node-2 waits for node-1-ready, node-3 for node-2-ready; each ready command runs on its
    own node after it (and, on node-1, after the volume is attached), and a new server is a new
    trigger."""
    plan = bases[stack]
    by_name = {r.name: r for r in plan.resources}
    servers = {r.name: r for r in plan.of_type(SERVER[cloud(stack)])}
    for i in (1, 2, 3):
        server = servers[f"shop-{stack}-node-{i}"]
        ready = by_name[f"shop-{stack}-node-{i}-ready"]
        assert server.name in ready.depends_on
        assert ready.plain_inputs()["triggers"] == [server.id]
        connection = ready.plain_inputs()["connection"]
        ip = plan.public_outputs()["serverIps"][f"node-{i}"]
        assert connection["host"] == ip and connection["user"] == "deploy"
        assert ready.public_inputs()["connection"] == "[secret]"  # it holds the deploy key
        command = ready.plain_inputs()["create"]
        assert command == ready.plain_inputs()["update"]
        assert command.endswith(f"sudo {NODE_READY}" + (" --cluster" if i == 3 else ""))
        if i > 1:
            assert f"shop-{stack}-node-{i - 1}-ready" in server.depends_on
        else:
            assert not any(d.endswith("-ready") for d in server.depends_on)
    attachment = next(r for r in plan.resources if r.name == f"shop-{stack}-data-attachment")
    assert attachment.name in by_name[f"shop-{stack}-node-1-ready"].depends_on


@pytest.mark.parametrize("stack", STACKS)
def test_a_machine_change_changes_every_node_and_nothing_else(bases, tmp_path, stack):
    """The order they are replaced in is the chain above (and the diff test shows it)."""
    after = plan_with_spec(stack, tmp_path, None, **{"blueprints:nomadVersion": "1.10.6"})
    changed = _changed(bases[stack], after)
    assert changed == [f"shop-{stack}-node-{i}" for i in (1, 2, 3)]


@pytest.mark.parametrize("stack", STACKS)
def test_the_app_goes_through_nomad_s_api(bases, stack):
    plan = bases[stack]
    by_name = {r.name: r for r in plan.resources}
    [provider] = [r for r in plan.resources if r.type == "pulumi:providers:nomad"]
    inputs = provider.plain_inputs()
    ip = plan.public_outputs()["serverIps"]["node-1"]
    assert inputs["address"] == f"https://{ip}:4646"
    assert inputs["caPem"].startswith("-----BEGIN CERTIFICATE-----")
    assert is_secret(provider.inputs["secretId"])
    assert inputs["secretId"] == f"<secret:shop-{stack}-acl-bootstrap>"
    readies = {f"shop-{stack}-node-{i}-ready" for i in (1, 2, 3)}
    jobs = {r.name.removeprefix(f"shop-{stack}-job-"): r for r in plan.of_type(JOB)}
    # the localstack stack sets a backup bucket: two periodic jobs more (test_backup_nomad)
    backup = ["backup", "backup-check"] if stack == "nomad-localstack" else []
    assert sorted(jobs) == sorted(["ingress", "postgres", "redis", "web", "worker", *backup])
    for name, job in jobs.items():
        assert job.provider is not None and "nomad" in job.provider
        assert readies <= set(job.depends_on), name
        # a periodic job has no deployment to wait for
        assert job.plain_inputs()["detach"] is (name in backup)
    # a service's job waits for the jobs of its dependencies and for its own secrets
    assert {f"shop-{stack}-job-postgres", f"shop-{stack}-job-redis"} <= set(jobs["web"].depends_on)
    assert f"shop-{stack}-secrets-web" in jobs["web"].depends_on
    variables = {r.name: r for r in plan.of_type(VARIABLE)}
    assert sorted(variables) == [
        f"shop-{stack}-secrets-{s}" for s in sorted(["postgres", "web", "worker", *backup])
    ]
    web = variables[f"shop-{stack}-secrets-web"].plain_inputs()
    assert web["path"] == "nomad/jobs/shop-web/web/web"
    assert sorted(web["items"]) == ["DATABASE_PASSWORD", "DJANGO_SECRET_KEY"]
    assert (
        by_name[f"shop-{stack}-job-ingress"].plain_inputs()["jobspec"].startswith("# The ingress")
    )


@pytest.mark.parametrize("stack", STACKS)
def test_deployer_networks_reach_ssh_and_the_api(tmp_path, stack):
    plan = plan_with_spec(
        stack, tmp_path, None, **{"blueprints:deployerNetworks": ["198.51.100.7/32"]}
    )
    both = ("198.51.100.7/32", "203.0.113.0/24")
    if cloud(stack) == "hcloud":
        [fw] = plan.of_type("hcloud:index/firewall:Firewall")
        rules = sorted((r["port"], tuple(r["sourceIps"])) for r in fw.plain_inputs()["rules"])
        assert rules == [("22", both), ("4646", both)]
    else:
        [server] = plan.of_type(SERVER["aws"])[:1]
        [group_id] = server.plain_inputs()["vpcSecurityGroupIds"]
        [sg] = [g for g in plan.of_type("aws:ec2/securityGroup:SecurityGroup") if g.id == group_id]
        public = sorted(
            (r["fromPort"], tuple(sorted(r.get("cidrBlocks", []))))
            for r in sg.plain_inputs()["ingress"]
            if r["protocol"] == "tcp"
        )
        assert public == [(22, both), (4646, both)]


def test_a_stack_nobody_can_reach_is_refused(tmp_path):
    data = copy.deepcopy(EXAMPLE)
    data["admin"]["cidrs"] = []
    spec = tmp_path / "app.yaml"
    spec.write_text(yaml.safe_dump(data))
    with pytest.raises(PlanError) as exc:
        plan_stack("nomad-hcloud", ROOT, {"blueprints:spec": str(spec)})
    assert "blueprints:deployerNetworks" in str(exc.value)
    assert len(str(exc.value).splitlines()) == 1


def test_secret_values_with_control_characters_are_refused(tmp_path):
    with pytest.raises(PlanError) as exc:
        plan_stack(
            "nomad-hcloud",
            ROOT,
            {"blueprints:secrets": {"DATABASE_PASSWORD": "a\x1bb"}},
        )
    message = str(exc.value)
    assert "blueprints:secrets.DATABASE_PASSWORD: contains a control character" in message
    assert "a\x1bb" not in message
