"""Does the app fit its servers: each rung's capacity check (blueprints/capacity.py), at plan
time and on its own."""

from __future__ import annotations

import copy
import re
import shutil
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from blueprints import capacity
from blueprints.compare import stack_settings
from blueprints.plan import PlanError, list_stacks, plan_stack
from blueprints.settings import StackSettings
from blueprints.spec import AppSpec, load_spec

ROOT = Path(__file__).resolve().parent.parent
STACKS = list_stacks(ROOT)
EXAMPLE = yaml.safe_load((ROOT / "examples/app.yaml").read_text())
D = Decimal


def spec_file(tmp_path: Path, data: dict, name: str = "app.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def app_of(data: dict) -> AppSpec:
    return AppSpec.model_validate(copy.deepcopy(data))


def example(change=None) -> AppSpec:
    data = copy.deepcopy(EXAMPLE)
    if change is not None:
        change(data)
    return app_of(data)


def settings(**kw) -> StackSettings:
    return StackSettings.model_validate(kw)


# A spec asking for 6 cores and 6 GiB (one service), as a new user might write it.
BIG = {
    "name": "big",
    "domain": "big.example.com",
    "acme_email": "ops@example.com",
    "services": {
        "app": {
            "image": "ghcr.io/example/app:1.0",
            "cpu": 6,
            "memory": "6Gi",
            "ports": [{"port": 8000, "expose": "http"}],
        }
    },
    "admin": {"cidrs": ["203.0.113.0/24"]},
}


# ----------------------------------------------------------------------------- every stack


def test_there_are_eight_stacks():
    assert len(STACKS) == 8


@pytest.mark.parametrize("stack", STACKS)
def test_the_example_fits_every_stack(stack):
    s = stack_settings(ROOT, stack)
    fit = capacity.check(load_spec(ROOT / "examples/app.yaml"), s)
    assert fit.machine is not None and fit.unknown is None
    assert fit.problems == (), fit.lines()
    assert fit.memory_needed <= fit.memory_offered


@pytest.mark.parametrize("stack", STACKS)
def test_six_cores_and_six_gib_are_refused_on_every_stack_with_the_numbers(tmp_path, stack):
    spec = spec_file(tmp_path, BIG)
    with pytest.raises(PlanError) as caught:
        plan_stack(stack, ROOT, {"blueprints:spec": str(spec)})
    lines = [line for line in str(caught.value).splitlines() if "capacity:" in line]
    s = stack_settings(ROOT, stack)
    size = s.size
    assert lines, str(caught.value)
    text = "\n".join(lines)
    # which service, needed vs offered, on which server type: one line per problem
    one = s.blueprint in ("single-vm", "compose")
    cores = "2" if one else "1.9"  # a cluster node keeps some for its agent and add-ons
    assert re.search(
        rf"service app \(one instance\): CPU 6 cores needed.*, {cores} cores offered .*{size}", text
    )
    # the stack file heads each line; the spec that does not fit is named
    assert all(
        line.startswith(f"stacks/Pulumi.{stack}.yaml: capacity: {spec} does not fit: ")
        for line in lines
    ), lines
    # one instance larger than the machine (its usable memory) or a node: memory too
    offered = {"single-vm": 3891, "compose": 3891, "nomad": 3891 - 256, "k8s": 3891 - 512}
    assert re.search(
        rf"service app \(one instance\): memory 6144 MiB needed.*, "
        rf"{offered[s.blueprint]} MiB offered by .*{size}: 2 vCPU, 3891 of 4096 MiB usable",
        text,
    )
    assert len(lines) == 2


def test_overcommit_relaxes_totals_and_plans_with_warnings(tmp_path):
    """All services together over the machine's memory: with blueprints:overcommit the plan
    goes ahead and says so."""
    data = copy.deepcopy(EXAMPLE)
    data["services"]["web"]["replicas"] = 6
    spec = spec_file(tmp_path, data)
    with pytest.raises(PlanError, match=r"capacity: .* does not fit: all services: memory"):
        plan_stack("compose-hcloud", ROOT, {"blueprints:spec": str(spec)})
    plan = plan_stack(
        "compose-hcloud", ROOT, {"blueprints:spec": str(spec), "blueprints:overcommit": "true"}
    )
    (warned,) = [n for n in plan.notes if n.startswith("capacity: ")]
    assert warned.startswith(f"capacity: {spec} does not fit: all services: memory ")
    assert warned.endswith("(planned anyway: blueprints:overcommit is true)")


@pytest.mark.parametrize("stack", ["compose-hcloud", "nomad-hcloud", "k8s-localstack"])
def test_overcommit_never_plans_an_instance_larger_than_a_machine(tmp_path, stack):
    """Docker refuses the CPU limit, a pod that big stays Pending, Nomad never places it:
    overcommit keeps these errors (and plans nothing)."""
    spec = spec_file(tmp_path, BIG)
    with pytest.raises(PlanError) as caught:
        plan_stack(stack, ROOT, {"blueprints:spec": str(spec), "blueprints:overcommit": "true"})
    lines = [line for line in str(caught.value).splitlines() if "capacity:" in line]
    assert len(lines) == 2 and all("service app (one instance)" in line for line in lines)


def test_overcommit_turns_only_totals_into_warnings(monkeypatch):
    """stack_problems: a total (a machine's memory, a node's group, after losing a node) is a
    warning with overcommit, one instance is an error either way."""
    warned: list[str] = []
    monkeypatch.setattr("pulumi.log.warn", warned.append)

    def heavy(data):
        data["services"]["web"]["replicas"] = 3
        data["services"]["web"]["memory"] = "2Gi"  # 3 x 2 GiB: over two nodes' memory
        data["services"]["postgres"]["cpu"] = 2.5  # more than a node's 1.9 cores

    app = example(heavy)
    strict = settings(blueprint="nomad", target="hcloud")
    lines = capacity.stack_problems(app, strict)
    assert [line.split(": ")[2] for line in lines] == [
        "service postgres (one instance)",
        "after losing node-2 or node-3",
    ]
    assert warned == []
    relaxed = settings(blueprint="nomad", target="hcloud", overcommit=True)
    (line,) = capacity.stack_problems(app, relaxed)
    assert "service postgres (one instance): CPU 2.5 cores needed" in line
    (warning,) = warned
    assert "after losing node-2 or node-3: memory" in warning
    assert warning.endswith("(planned anyway: blueprints:overcommit is true)")


def test_overcommit_is_a_documented_setting():
    field = StackSettings.model_fields["overcommit"]
    assert field.default is False and "capacity" in (field.description or "")
    assert settings(blueprint="k8s", target="hcloud", overcommit=True).overcommit


def test_a_type_outside_the_table_plans_with_a_warning_that_the_fit_is_unknown(tmp_path):
    s = settings(blueprint="compose", target="aws", serverType="m7i.large")
    fit = capacity.check(load_spec(ROOT / "examples/app.yaml"), s)
    assert fit.machine is None and fit.problems == ()
    assert "m7i.large is not in the price table" in (fit.unknown or "")
    plan = plan_stack(
        "compose-localstack",
        ROOT,
        {"blueprints:serverType": "m7i.large", "blueprints:spec": str(spec_file(tmp_path, BIG))},
    )
    assert any(n.startswith("capacity: not checked: server type m7i.large") for n in plan.notes)


def test_a_real_app_that_needs_a_bigger_server_is_refused_on_the_defaults():
    """Plausible (ClickHouse wants 2 GiB) does not fit a 4 GiB machine with its migration task;
    tests/test_apps.py plans it on cx33 / t3.xlarge."""
    app = load_spec(ROOT / "tests/apps/plausible/app.yaml")
    fit = capacity.check(app, settings(blueprint="single-vm", target="hcloud"))
    (line,) = fit.lines()
    assert line.startswith("capacity: all services: memory 4864 MiB needed (")
    assert "task migrate 1024" in line and "3891 MiB offered" in line
    assert capacity.check(
        app, settings(blueprint="single-vm", target="hcloud", serverType="cx33")
    ).fits


# ----------------------------------------------------------------------------- usable memory


def test_every_rung_offers_the_usable_memory_not_the_ram_as_sold():
    """A "4 GB" cx23 or t3.medium shows the kernel about 3.8 GiB: 95% of 4096 MiB, on every
    rung, before each rung's own reserve."""
    assert capacity.usable_mib(4096) == 3891 and capacity.usable_mib(8192) == 7782
    machine = capacity.machine_of(settings(blueprint="compose", target="hcloud"))
    assert machine == capacity.Machine("cx23", 2, 4096) and machine.memory_mib == 3891
    assert machine.describe() == "cx23: 2 vCPU, 3891 of 4096 MiB usable"
    app = example()
    offered = {
        blueprint: capacity.check(app, settings(blueprint=blueprint, target="localstack"))
        for blueprint in ("single-vm", "compose", "nomad", "k8s")
    }
    assert {b: f.memory_offered for b, f in offered.items()} == {
        "single-vm": 3891,
        "compose": 3891,
        "nomad": 3 * (3891 - capacity.NOMAD_RESERVED_MEMORY_MIB),
        "k8s": 3 * (3891 - capacity.K8S_WORKER_RESERVE_MIB),
    }
    assert all(f.machine is not None and f.machine.type == "t3.medium" for f in offered.values())


# ----------------------------------------------------------------------------- one machine


def test_one_machine_sums_memory_not_cpu():
    # The example's CPU limits add up to 2.75 cores on 2 vCPU: ceilings, shared; it fits.
    app = example()
    assert sum(s.cpu * s.replicas for s in app.services.values()) > 2
    fit = capacity.check(app, settings(blueprint="compose", target="hcloud"))
    assert fit.fits and fit.cpu_needed is None
    steady = sum(s.memory * s.replicas for s in app.services.values())
    assert fit.memory_needed == steady + capacity.SINGLE_MACHINE_RESERVE_MIB


def test_one_instance_above_the_machines_cpus_is_refused():
    def wide(data):
        data["services"]["worker"]["cpu"] = 2.5

    fit = capacity.check(example(wide), settings(blueprint="single-vm", target="hcloud"))
    (line,) = fit.lines()
    assert line == (
        "capacity: service worker (one instance): CPU 2.5 cores needed (Docker refuses a CPU "
        "limit above the machine's CPUs), 2 cores offered by each of the primary and the spare "
        "(cx23: 2 vCPU, 3891 of 4096 MiB usable)"
    )
    assert fit.problems[0].instance


def test_one_instance_above_the_machines_memory_is_refused():
    def tall(data):
        data["services"]["redis"]["memory"] = "4Gi"

    fit = capacity.check(example(tall), settings(blueprint="compose", target="hcloud"))
    (problem,) = fit.problems
    assert problem.instance and problem.line() == (
        "capacity: service redis (one instance): memory 4096 MiB needed (a limit above the "
        "machine's memory is never reached), 3891 MiB offered by the VM (cx23: 2 vCPU, 3891 of "
        "4096 MiB usable)"
    )


def _shop(data):
    """The example with figures of its own, whatever examples/app.yaml holds."""
    data["services"]["web"].update(replicas=2, memory="512Mi")
    data["services"]["worker"]["memory"] = "512Mi"
    data["services"]["postgres"]["memory"] = "1Gi"
    data["services"]["redis"]["memory"] = "256Mi"


def test_memory_on_one_machine_counts_replicas_the_surge_and_the_largest_one_off():
    def heavier(data):
        _shop(data)
        data["services"]["web"]["replicas"] = 3
        data["tasks"] = {"migrate": {"service": "postgres", "command": ["true"]}}

    app = example(heavier)
    fit = capacity.check(app, settings(blueprint="single-vm", target="hcloud"))
    assert app.services["web"].replicas == 3
    # + one new web container beside the old ones (single-vm) + task migrate (postgres') +
    # the reserve
    needed = 3 * 512 + 512 + 1024 + 256 + 512 + 1024 + 512
    (line,) = fit.lines()
    assert line.startswith(f"capacity: all services: memory {needed} MiB needed (")
    assert "web 3 x 512" in line and "the largest one-off run, task migrate 1024" in line
    assert "+ a release's surge, worker 512" in line  # web's and worker's are alike: by name


def test_a_release_surges_one_container_on_single_vm_and_all_replicas_on_compose():
    """single-vm's agent starts one new container of a stateless service beside the old ones;
    compose's starts all of them (docker-rollout), so the same app needs more room there. A
    service with a volume is stopped first: no surge."""

    def app_of_it(data):
        _shop(data)
        data["services"]["postgres"]["memory"] = "1536Mi"  # the largest, but stateful

    app = example(app_of_it)
    steady = 2 * 512 + 512 + 1536 + 256 + capacity.SINGLE_MACHINE_RESERVE_MIB  # 3840
    surges = {}
    for blueprint in ("single-vm", "compose"):
        loads = {x.name: x for x in capacity.single_machine_loads(app, blueprint)}
        surges[blueprint] = {name: x.surge for name, x in loads.items()}
        fit = capacity.check(app, settings(blueprint=blueprint, target="hcloud"))
        assert fit.memory_needed == steady
        (line,) = fit.lines()
        extra = {"single-vm": 512, "compose": 2 * 512}[blueprint]
        assert f"memory {steady + extra} MiB needed" in line
    assert surges == {
        "single-vm": {"postgres": 0, "redis": 1, "web": 1, "worker": 1},
        "compose": {"postgres": 0, "redis": 1, "web": 2, "worker": 1},
    }
    line = capacity.check(app, settings(blueprint="compose", target="hcloud")).lines()[0]
    assert "+ a release's surge, web 2 x 512, + 512 for the OS" in line


def test_the_example_leaves_room_for_composes_surge():
    """The example's web (2 x 384 MiB) rolls out on compose with two new containers beside the
    old two: 3840 of cx23's 3891 usable MiB."""
    app = load_spec(ROOT / "examples/app.yaml")
    loads = capacity.single_machine_loads(app, "compose")
    needed, detail = capacity._peak(
        loads, capacity.MEMORY, False, D(capacity.SINGLE_MACHINE_RESERVE_MIB), "reserve"
    )
    assert "a release's surge, web 2 x 384" in detail
    assert needed <= capacity.usable_mib(4096)


# ----------------------------------------------------------------------------- nomad


def test_nomad_counts_the_ingress_and_checks_the_loss_of_a_node():
    """web 3 x 1 core on three 2-vCPU nodes: all of it, with the canaries, fits the three
    (5.7 cores), not the two left after node-2 or node-3 dies (3.8)."""

    def wide(data):
        data["services"]["web"]["replicas"] = 3
        data["services"]["web"]["cpu"] = 1

    fit = capacity.check(example(wide), settings(blueprint="nomad", target="hcloud"))
    (line,) = fit.lines()
    # 3 x 1 + worker 0.5 + postgres 1 + redis 0.25 + Traefik 0.1 (200 MHz)
    assert line == (
        "capacity: after losing node-2 or node-3: CPU 4.85 cores needed (postgres 1, redis "
        "0.25, web 3 x 1, worker 0.5, ingress (Traefik) 0.1), 3.8 cores offered by the other 2 "
        "nomad nodes (cx23, 1.9 cores each)"
    )
    assert fit.cpu_offered == D("5.7") and fit.cpu_needed == D("4.85")


def test_nomad_leaves_room_for_the_canaries():
    """A group with a canary starts one new instance beside the old ones; web with a port on
    every node (3 replicas) and postgres (its volume) have none. Every canary counts at once."""

    def wide(data):
        data["services"]["web"]["replicas"] = 3
        data["services"]["worker"]["cpu"] = 1.4
        data["services"]["worker"]["replicas"] = 2

    app = example(wide)
    s = settings(blueprint="nomad", target="hcloud")
    surges = {x.name: x.surge for x in capacity.nomad_loads(app, s) if x.steady}
    assert surges == {"postgres": 0, "redis": 1, "web": 0, "worker": 1, "ingress (Traefik)": 0}
    # steady 5.65 cores fit the three nodes (5.7), not with worker's and redis's canaries
    (line,) = capacity.check(app, s).lines()
    assert line == (
        "capacity: all services: CPU 7.3 cores needed (postgres 1, redis 0.25, web 3 x 0.5, "
        "worker 2 x 1.4, ingress (Traefik) 0.1, + a release's surge, redis 0.25, worker 1.4), "
        "5.7 cores offered by the 3 nomad nodes (cx23, 1.9 cores each)"
    )


def test_nomad_data_node_overflow_names_what_runs_there():
    def stateful(data):
        data["services"]["redis"]["volumes"] = [{"volume": "cache", "path": "/data"}]
        data["services"]["redis"]["memory"] = "2Gi"
        data["volumes"]["cache"] = {"size_gb": 1}
        data["services"]["postgres"]["memory"] = "2Gi"

    fit = capacity.check(example(stateful), settings(blueprint="nomad", target="hcloud"))
    (line,) = fit.lines()
    assert line == (
        "capacity: what runs on the data node: memory 4224 MiB needed (postgres 2048, redis "
        "2048, ingress (Traefik) 128), 3635 MiB offered by one nomad node (cx23: 2 vCPU, "
        "3891 of 4096 MiB usable, less the 200 MHz and 256 MiB the Nomad client keeps; 2000 MHz "
        "per core)"
    )


def test_nomad_backups_run_on_the_data_node_as_a_one_off():
    app = example()
    with_bucket = settings(
        blueprint="nomad", target="localstack", backupBucket="b-1", backupAccessKey="k"
    )
    loads = capacity.nomad_loads(app, with_bucket)
    (backup,) = [x for x in loads if x.name == "backup"]
    assert not backup.steady and backup.group == "data node"
    assert backup.memory == 512 and backup.cpu == D("0.05")
    assert not any(
        x.name == "backup"
        for x in capacity.nomad_loads(app, settings(blueprint="nomad", target="localstack"))
    )


def test_the_nomad_figures_are_the_templates():
    """The reserves and helper tasks capacity.py counts are what the rung's templates set."""
    templates = ROOT / "blueprints/rungs/nomad/templates"

    def resources(name: str, after: str) -> tuple[int, int]:
        text = (templates / name).read_text()
        text = text[text.index(after) :]
        found = re.search(r"cpu\s+=\s+(\d+)\s+memory\s+=\s+(\d+)", text)
        assert found, name
        return int(found.group(1)), int(found.group(2))

    assert resources("agent.hcl.j2", "reserved {") == (
        capacity.NOMAD_RESERVED_CPU_MHZ,
        capacity.NOMAD_RESERVED_MEMORY_MIB,
    )
    assert resources("ingress.nomad.hcl.j2", "resources {") == capacity.NOMAD_INGRESS
    assert resources("service.nomad.hcl.j2", "resources {") == capacity.NOMAD_WAIT_TASK
    assert resources("run.nomad.hcl.j2", "resources {") == capacity.NOMAD_RUN_WATCHDOG


# ----------------------------------------------------------------------------- k8s


def test_k8s_reads_the_requests_from_the_manifests():
    s = settings(blueprint="k8s", target="hcloud")
    loads = {x.name: x for x in capacity.k8s_loads(example(_shop), s)}
    assert (loads["web"].count, loads["web"].cpu, loads["web"].memory) == (2, D("0.5"), 512)
    assert (loads["postgres"].cpu, loads["postgres"].memory) == (D(1), 1024)
    assert all(x.steady for x in loads.values())
    # a Deployment surges by its maxSurge (the manifests set no strategy: Kubernetes' 25%,
    # rounded up); the StatefulSet replaces its pod in place
    assert {n: x.surge for n, x in loads.items()} == {
        "postgres": 0,
        "redis": 1,
        "web": 1,
        "worker": 1,
    }


def test_a_deployments_surge_is_its_max_surge():
    assert [capacity.deployment_surge({}, n) for n in (1, 2, 4, 5, 8)] == [1, 1, 1, 2, 2]
    rolling = {"strategy": {"rollingUpdate": {"maxSurge": 3}}}
    assert capacity.deployment_surge(rolling, 2) == 3
    share = {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "50%"}}}
    assert capacity.deployment_surge(share, 3) == 2
    assert capacity.deployment_surge({"strategy": {"type": "Recreate"}}, 4) == 0


def test_k8s_leaves_room_for_every_deployments_surge():
    """All Deployments roll at once after the release's tasks: the workers hold the steady pods
    and one more of each Deployment."""

    def wide(data):
        data["services"]["web"].update(replicas=4, cpu=0.75)
        data["services"]["worker"]["cpu"] = 1

    fit = capacity.check(example(wide), settings(blueprint="k8s", target="hcloud"))
    (line,) = fit.lines()
    # steady 5.25 cores fit the 5.7; with web's, worker's and redis's surge they do not
    assert line == (
        "capacity: all services: CPU 7.25 cores needed (postgres 1, redis 0.25, web 4 x 0.75, "
        "worker 1, + a release's surge, redis 0.25, web 0.75, worker 1), 5.7 cores offered by "
        "the 3 workers (cx23, 1.9 cores each)"
    )


def test_a_pod_requests_its_containers_or_its_largest_init_container():
    pod = {
        "containers": [
            {"resources": {"requests": {"cpu": "100m", "memory": "256Mi"}}},
            {"resources": {"requests": {"cpu": "0.25", "memory": "1Gi"}}},
        ],
        "initContainers": [{"resources": {"requests": {"cpu": "2", "memory": "64Mi"}}}],
    }
    assert capacity.pod_requests(pod) == (D(2), 1280)
    assert capacity.quantity_mib("1G") == 954 and capacity.quantity_mib("512Ki") == 1


def test_k8s_pods_sharing_a_claim_fit_one_worker_together(tmp_path):
    """tests/everything's web and worker share the volume uploads (one node); a task mounting
    it runs there too."""
    app = load_spec(ROOT / "tests/everything/app.yaml")
    s = settings(blueprint="k8s", target="hcloud")
    groups = {x.group for x in capacity.k8s_loads(app, s) if x.group}
    assert groups == {"node of volume uploads"}
    assert capacity.check(app, s).fits

    # the worker asks for more: with web and the largest task mounting uploads, over a worker
    copy_of = tmp_path / "everything"
    shutil.copytree(ROOT / "tests/everything", copy_of)
    data = yaml.safe_load((copy_of / "app.yaml").read_text())
    data["services"]["worker"]["cpu"] = 1.5
    (copy_of / "app.yaml").write_text(yaml.safe_dump(data))
    fit = capacity.check(load_spec(copy_of / "app.yaml"), s)
    (line,) = fit.lines()
    # web and worker, and the schedule `report` (run as the worker) when it runs
    assert line.startswith(
        "capacity: what runs on the node of volume uploads: CPU 3.25 cores needed (web 0.25, "
        "worker 1.5, + the largest one-off run, CronJob "
    )
    assert "report 1.5), 1.9 cores offered by one worker (cx23: 2 vCPU" in line


def test_k8s_checks_the_loss_of_a_worker():
    def wide(data):
        data["services"]["web"]["replicas"] = 3
        data["services"]["web"]["cpu"] = 0.75

    fit = capacity.check(example(wide), settings(blueprint="k8s", target="localstack"))
    (line,) = fit.lines()
    # all of it with a release's surge and the backup's run fits the three (5.6 of 5.7 cores)
    assert line == (
        "capacity: after losing a worker: CPU 4 cores needed (postgres 1, redis 0.25, web "
        "3 x 0.75, worker 0.5), 3.8 cores offered by the other 2 workers (t3.medium, 1.9 cores "
        "each)"
    )


def test_only_the_serving_machines_count():
    from blueprints.rungs.k8s.component import WORKERS
    from blueprints.rungs.nomad.rules import NODE_COUNT

    assert [capacity.serving(b) for b in ("single-vm", "compose", "nomad", "k8s")] == [1, 1, 3, 3]
    assert (capacity.NOMAD_NODES, capacity.K8S_WORKERS) == (NODE_COUNT, WORKERS)


# ----------------------------------------------------------------------------- validate -b


def test_validate_with_a_blueprint_checks_its_default_servers(tmp_path):
    """`validate -b` says the spec passes the rung's rules and whether it fits the rung's
    default server type on each cloud (no plan); a spec that does not fit gets warnings, not
    "fits", and exit 0 (each stack's servers are checked when it is planned)."""
    from typer.testing import CliRunner

    from blueprints.cli import app as cli

    runner = CliRunner()
    env = {"COLUMNS": "200", "NO_COLOR": "1"}
    ok = runner.invoke(cli, ["validate", "examples/app.yaml", "-b", "k8s"], env=env)
    assert ok.exit_code == 0, ok.output
    assert "passes the k8s rules; fits its default servers (cx23 on hcloud, t3.medium on aws)" in (
        ok.stdout
    )
    assert ok.stderr == ""
    big = spec_file(tmp_path, BIG, "big.yaml")
    res = runner.invoke(cli, ["validate", str(big), "-b", "k8s"], env=env)
    assert res.exit_code == 0 and "Traceback" not in res.output
    assert "fits its default" not in res.stdout
    assert "passes the k8s rules; does not fit its default servers" in res.stdout
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: k8s on {cloud}'s default server type: capacity: {big} does not fit: service "
        f"app (one instance): {what}"
        for cloud, kind in (("hcloud", "cx23"), ("aws", "t3.medium"))
        for what in (
            f"CPU 6 cores needed, 1.9 cores offered by one worker ({kind}: 2 vCPU, 3891 of 4096 "
            "MiB usable, less 100m and 512 MiB kept for the system)",
            f"memory 6144 MiB needed, 3379 MiB offered by one worker ({kind}: 2 vCPU, 3891 of "
            "4096 MiB usable, less 100m and 512 MiB kept for the system)",
        )
    ]
    assert "only with a larger blueprints:serverType\n" in res.stderr


def test_a_shortfall_line_names_the_largest_and_sums_the_rest():
    """At hundreds of services the line stays a line: the largest in their order, then the
    count and sum of the rest."""
    parts = [(f"s{i}", 2 if i == 0 else 1, 100 + i) for i in range(10)]
    assert capacity._terms(parts, capacity.MEMORY) == (
        "s0 2 x 100, s6 106, s7 107, s8 108, s9 109, and 5 more 515"
    )
    assert capacity._terms(parts[:3], capacity.MEMORY) == "s0 2 x 100, s1 101, s2 102"


def test_secret_names_are_worked_out_once_and_stay_right():
    spec = load_spec(ROOT / "examples/app.yaml")
    first = spec.secret_names()
    first.append("MUTATED")  # a caller's list is its own
    assert spec.secret_names() == ["DATABASE_PASSWORD", "DJANGO_SECRET_KEY", "POSTGRES_PASSWORD"]
    # the cache is no part of the spec: equal to one that never worked them out
    assert spec == load_spec(ROOT / "examples/app.yaml")
