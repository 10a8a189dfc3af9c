"""Does the app fit its servers? Each rung's check of the spec's cpu and memory against what the
stack's servers offer, in the units and by the rules that rung's runtime uses.

Every service asks for `cpu` cores and `memory` MiB per instance (x `replicas`). What that
means differs per rung, and so does the check:

- **single-vm, compose** (one machine runs the whole app; on single-vm the spare, of the same
  type, takes it over): `cpu` and `memory` become Docker limits, ceilings rather than
  reservations. Memory cannot be shared: the services' limits, x replicas, plus what a release
  starts beside them (below), plus the largest one-off run (a release task or a schedule runs
  with its service's limits), plus SINGLE_MACHINE_RESERVE for what else the machine runs, must
  fit its usable RAM, or the kernel's OOM killer ends a service once they all use what they may.
  CPU time is shared: limits adding up to more cores than the machine has only slow services
  down at peaks, so the sum is not checked; but one instance may not ask for more cores than the
  machine has (Docker refuses a CPU limit above the machine's CPUs), nor for more memory than it
  has (a limit it can never reach).
- **nomad** (three nodes, each a server and a client): `cpu` is reserved at 2000 MHz per core
  (blueprints/rungs/nomad/release.py) and `memory` in MiB; Nomad places an instance only on a
  node with that much left after the client's `reserved` block (NOMAD_RESERVED). Checked: the
  largest instance fits one node; what is pinned to the data node (node-1: the services with
  volumes, the ingress, and a backup or task run that mounts the volume) fits it; everything,
  plus a release's canaries and the largest one-off run, fits the three; and, since the rung
  claims to survive losing node-2 or node-3, everything that runs steadily fits the two nodes
  left.
- **k8s** (three control planes, tainted for add-ons only, and three workers): the manifests
  set requests equal to limits, so the scheduler reserves what the spec allows. Read from the
  rendered manifests (blueprints/rungs/k8s/release.py): each pod's requests (its containers', or
  its largest init container's if that is more); pods that must share a node (a ReadWriteOnce
  claim several pods mount) fit one worker together; the largest pod fits one worker; everything
  plus a release's surge and the largest one-off pod (a task's Job, a CronJob's run, a backup)
  fits the three; and, since the rung claims to survive losing a worker, the steady pods fit the
  other two. A worker offers its usable RAM and its vCPU less K8S_WORKER_RESERVE.

**A release's surge**: what a release starts beside the old instances before it stops them, as
each rung's release really rolls (a release first runs its tasks, then replaces the services):

- single-vm (blueprints/release/agent.py, SingleVm.roll): services roll one after another; a
  stateless one (no volume, no published tcp port: render/single_vm.py `rollout`) gets one new
  container beside its old ones first, a stateful one is stopped before it starts again. Room
  for: one instance of the largest stateless service.
- compose (agent.py, Compose.roll): services roll one after another; a stateless one gets all
  its new containers (`replicas`) beside the old ones, healthy first, then the old ones go.
  Room for: `replicas` instances of the largest stateless service.
- nomad (templates/service.nomad.hcl.j2): a group with a canary (stateless, a node with its
  ports free: release.py `_canary`) starts one new instance beside the old ones; the others are
  replaced one at a time (`max_parallel = 1`, the old one stopped first). Pulumi sends the jobs
  of services that do not depend on each other at once, so the check makes room for every
  canary together (more than runs at once where one service waits for another's job).
- k8s: a Deployment rolls with Kubernetes' default RollingUpdate (the manifests set no
  strategy): maxSurge 25% of its replicas, rounded up, so at least one pod beside the old ones;
  a StatefulSet replaces its pods in place. All Deployments roll at once (they wait only for
  the release's last task), so room is made for every Deployment's surge together.

The surge and the largest one-off run are counted together (a schedule or a backup may start
during a rollout), which is more than happens when the largest one-off is a release task
(tasks run before the rollout). Losing a node is checked without them: a release during an
outage is not promised.

**Usable memory**: a server type's RAM as sold (from the price table) is not what the kernel
offers to processes: the kernel's own code and data, the page structures of all memory (64
bytes per 4 KiB page, 1.6%), firmware-reserved ranges and, where the kernel sets one up, the
I/O bounce buffer (swiotlb, 64 MiB) are taken first, so a "4 GB" cx23 or t3.medium shows about
3.8 GiB as MemTotal. That is what the containers of one machine share, and what the kubelet (a
node's capacity) and the Nomad client (its fingerprinted memory) count from.
USABLE_MEMORY_PERCENT (95%) stands for it on every rung: an estimate from those parts for
Ubuntu 24.04 on 2-16 GiB machines, not a measurement of each type. AWS documents such a gap
(docs.aws.amazon.com/batch/latest/userguide/memory-management.html: an m4.large, 8 GiB as
sold, shows 8373026816 bytes, 7985 MiB, to `free -b` on the ECS-optimized Amazon Linux AMI,
2.5% less).

A server type's vCPU and RAM come from the price table (blueprints/prices.yaml). Hetzner types
outside it are refused when the stack is read (blueprints/settings.py). An EC2 type outside it
(the table lists a few of hundreds) plans, as the stack check allows it, but its size is not
known here: the plan warns that the fit was not checked, and listing the type in the table
(`name: [vCPU, RAM GiB, USD per hour]`) turns the check on.

The reserves are estimates of what the machine runs besides the app, not measurements; they
sit in the constants below, easy to question and to change. With `blueprints:overcommit: true`
a stack plans although the totals do not fit (all services on the machine or the nodes, what
must share one node, what is left after losing a node), each such shortfall a warning instead.
One instance larger than a whole machine or node stays an error: Docker refuses the CPU limit,
a pod that big stays Pending, Nomad never places it. On nomad and k8s the schedulers reserve
what each instance asks for, so an overcommitted total there means some instance waits
unplaced until room frees: overcommit only lets such a stack plan (to compare it, say).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from blueprints import costs
from blueprints.settings import StackSettings
from blueprints.spec import AppSpec, Service

MIB_PER_GIB = 1024

# The share of a server's RAM (as sold) that the kernel offers to processes (MemTotal), in
# percent: see "Usable memory" above.
USABLE_MEMORY_PERCENT = 95

# What a single machine (single-vm, compose) runs besides the app's containers, in MiB: the OS
# (systemd, journald, sshd, unattended-upgrades), dockerd and containerd, the reverse proxy
# (Caddy), the release agent and health timers, and a backup run (restic and its index). An
# estimate of their resident memory on Ubuntu 24.04, with room to spare.
SINGLE_MACHINE_RESERVE_MIB = 512

# Nomad: MHz per core the rung reserves for the spec's cores, and what each client keeps back
# from scheduling (its `reserved` block, blueprints/rungs/nomad/templates/agent.hcl.j2: the OS,
# Docker and the Nomad agent itself).
NOMAD_RESERVED_CPU_MHZ = 200
NOMAD_RESERVED_MEMORY_MIB = 256
# The ingress job (Traefik, one instance on the data node) and the small helper tasks, as their
# templates reserve them (ingress.nomad.hcl.j2, service.nomad.hcl.j2, run.nomad.hcl.j2).
NOMAD_INGRESS = (200, 128)  # MHz, MiB
NOMAD_WAIT_TASK = (50, 32)  # the prestart task waiting for dependencies (ephemeral)
NOMAD_RUN_WATCHDOG = (20, 16)  # beside a task's or schedule's run: its time limit

# k8s: what a worker cannot give to the app's pods, an estimate. k3s sets no kube-reserved or
# system-reserved, so the kubelet offers (almost) the whole machine: these figures stand for
# the kubelet's hard-eviction threshold (memory.available < 100Mi), the OS and the k3s agent
# (kubelet, containerd, flannel; about 300 MiB), and the add-on pods that may run on a worker
# (CoreDNS and metrics-server request 100m each; ServiceLB, the CSI node plugin, cert-manager).
K8S_WORKER_RESERVE_MILLICORES = 100
K8S_WORKER_RESERVE_MIB = 512
# Kubernetes' default for a Deployment without a strategy (RollingUpdate).
K8S_DEFAULT_MAX_SURGE = "25%"

NOMAD_NODES = 3  # blueprints/rungs/nomad/rules.py NODE_COUNT
K8S_WORKERS = 3  # blueprints/rungs/k8s/component.py WORKERS

CPU, MEMORY = "CPU", "memory"


# ---------------------------------------------------------------------------------------------
# Figures


def _cores(value: Decimal) -> str:
    """Decimal cores as text: 3.25, 2, 0.1."""
    return f"{value.quantize(Decimal('0.001')).normalize():f}"


def amount(resource: str, value: Decimal | int) -> str:
    """A figure with its unit: '3.25 cores', '1 core', '2816 MiB'."""
    if resource == CPU:
        text = _cores(Decimal(value))
        return f"{text} core" + ("" if Decimal(value) == 1 else "s")
    return f"{int(value)} MiB"


def usable_mib(nominal_mib: int) -> int:
    """The memory the kernel offers to processes on a machine sold with `nominal_mib`."""
    return nominal_mib * USABLE_MEMORY_PERCENT // 100


@dataclass(frozen=True)
class Machine:
    """A server type and what it offers: its vCPU, its RAM as sold and the part of it usable."""

    type: str
    vcpu: int
    nominal_mib: int

    @property
    def memory_mib(self) -> int:
        return usable_mib(self.nominal_mib)

    def describe(self) -> str:
        return f"{self.type}: {self.vcpu} vCPU, {self.memory_mib} of {self.nominal_mib} MiB usable"


@dataclass(frozen=True)
class Problem:
    """One shortfall: what needs `needed` of a resource where `offered` is all there is.
    `instance`: one instance larger than a whole machine or node, which no setting makes run
    (else a total, which blueprints:overcommit turns into a warning)."""

    subject: str  # "service web (one instance)", "all services", "after losing a worker"
    resource: str  # CPU or memory
    needed: Decimal  # cores or MiB
    offered: Decimal
    by: str  # what offers it: "one worker (cx23: ...)"
    detail: str = ""  # how `needed` adds up
    instance: bool = False

    def line(self, spec: str | None = None) -> str:
        """'capacity: [<spec> does not fit: ]<subject>: <resource> <needed> needed (...),
        <offered> offered by <what>'."""
        needed = amount(self.resource, self.needed)
        offered = amount(self.resource, self.offered)
        detail = f" ({self.detail})" if self.detail else ""
        which = f"{spec} does not fit: " if spec else ""
        return (
            f"capacity: {which}{self.subject}: {self.resource} {needed} needed{detail}, "
            f"{offered} offered by {self.by}"
        )


@dataclass(frozen=True)
class Fit:
    """A stack's capacity check: the machines that serve the app, what the app needs of them
    in total (as that rung counts it), what they offer, and every shortfall."""

    blueprint: str
    machine: Machine | None
    serving: int  # machines that run the app (not a spare, not a control plane)
    cpu_needed: Decimal | None  # cores; None where the rung does not sum CPU (ceilings)
    memory_needed: int  # MiB, the steady total (with the reserve on one machine)
    cpu_offered: Decimal | None = None  # cores the serving machines offer the app, in all
    memory_offered: int = 0  # MiB
    problems: tuple[Problem, ...] = ()
    unknown: str | None = None  # why the fit cannot be checked (a type the table lacks)

    @property
    def fits(self) -> bool:
        return not self.problems and self.unknown is None

    def lines(self, spec: str | None = None) -> list[str]:
        return [p.line(spec) for p in self.problems]

    def summary(self) -> str:
        """What the app needs of what serves it, in a few words."""
        if self.machine is None:
            return "not checked (server type not in the price table)"
        memory = f"memory {self.memory_needed} of {self.memory_offered} MiB"
        if self.cpu_needed is None:
            cpu = "CPU limits are ceilings, shared"
        else:
            cpu = f"CPU {_cores(self.cpu_needed)} of {_cores(self.cpu_offered or Decimal(0))} cores"
        verdict = "fits" if self.fits else "does not fit"
        return f"{verdict}: {memory}, {cpu}"


def machine_of(
    settings: StackSettings, tables: Mapping[str, costs.PriceTable] | None = None
) -> Machine | None:
    """The stack's server type and its size from the price table (None: the table lacks it)."""
    table = (tables or costs.shipped_tables())[settings.cloud]
    kind = table.server_types.get(settings.size)
    if kind is None:
        return None
    return Machine(settings.size, kind.vcpu, int(kind.memory_gib * MIB_PER_GIB))


def serving(blueprint: str) -> int:
    """How many of a stack's machines run the app: single-vm's spare and k8s's control planes
    (tainted for add-ons only) do not."""
    return {"single-vm": 1, "compose": 1, "nomad": NOMAD_NODES, "k8s": K8S_WORKERS}[blueprint]


def _unknown(settings: StackSettings) -> str:
    return (
        f"capacity: not checked: server type {settings.size} is not in the price table "
        "(blueprints/prices.yaml), so its vCPU and RAM are not known here; list it there "
        "(name: [vCPU, RAM GiB, price]) to check that the app fits"
    )


# Terms named one by one in a shortfall's line; an app with more names its largest and sums
# the rest, so a line stays a line at 500 services.
MAX_TERMS = 6


def _terms(parts: Iterable[tuple[str, int, Decimal | int]], resource: str) -> str:
    """'web 2 x 512, worker 512' (figures without units: the total names the unit); beyond
    MAX_TERMS the largest MAX_TERMS - 1 in their order, then 'and N more X'."""

    def figure(value: Decimal | int) -> str:
        return _cores(Decimal(value)) if resource == CPU else str(int(value))

    def term(name: str, count: int, each: Decimal | int) -> str:
        return f"{name} {count} x {figure(each)}" if count != 1 else f"{name} {figure(each)}"

    listed = list(parts)
    if len(listed) <= MAX_TERMS:
        return ", ".join(term(*p) for p in listed)
    order = sorted(range(len(listed)), key=lambda i: (-listed[i][1] * Decimal(listed[i][2]), i))
    named = set(order[: MAX_TERMS - 1])
    rest = sum(Decimal(c) * Decimal(e) for i, (_, c, e) in enumerate(listed) if i not in named)
    shown = ", ".join(term(*p) for i, p in enumerate(listed) if i in named)
    return f"{shown}, and {len(listed) - len(named)} more {figure(rest)}"


# ---------------------------------------------------------------------------------------------
# Loads


@dataclass(frozen=True)
class Load:
    """What runs: `count` instances (pods, allocations, containers) of cpu cores and memory MiB
    each. `steady`: runs all the time (else a one-off: a task, a schedule, a backup). `group`:
    the instances that must run on one node together (nomad: "data node"; k8s: a claim).
    `surge`: the instances a release starts beside the old ones before it stops them."""

    name: str
    count: int
    cpu: Decimal
    memory: int
    steady: bool = True
    group: str | None = None
    kind: str = "service"  # what `name` is, in a problem's subject
    surge: int = 0

    @property
    def what(self) -> str:
        return f"{self.kind} {self.name}" if self.kind else self.name


def _steady(loads: Iterable[Load]) -> list[Load]:
    return [x for x in loads if x.steady]


def _largest_one_off(loads: Iterable[Load], resource: str) -> Load | None:
    runs = [x for x in loads if not x.steady]
    if not runs:
        return None
    return max(runs, key=lambda x: (x.cpu if resource == CPU else x.memory, x.name))


def _value(x: Load, resource: str) -> Decimal:
    return x.cpu if resource == CPU else Decimal(x.memory)


def _total(loads: Iterable[Load], resource: str) -> Decimal:
    return sum((_value(x, resource) * x.count for x in loads), Decimal(0))


def _surging(loads: Iterable[Load], resource: str, together: bool) -> list[Load]:
    """What a release starts beside the old instances: every service's surge (`together`: the
    rung rolls them at once), or the largest one's (it rolls one service after another)."""
    surging = [x for x in loads if x.steady and x.surge and _value(x, resource) > 0]
    if together or not surging:
        return surging
    return [max(surging, key=lambda x: (_value(x, resource) * x.surge, x.name))]


def _peak(
    loads: list[Load],
    resource: str,
    together: bool,
    reserve: Decimal = Decimal(0),
    reserve_text: str = "",
) -> tuple[Decimal, str]:
    """The steady total plus a release's surge and the largest one-off run (and a reserve),
    and how it adds up."""
    steady = _steady(loads)
    total = _total(steady, resource) + reserve
    detail = _terms(((x.name, x.count, _value(x, resource)) for x in steady), resource)
    surging = _surging(loads, resource, together)
    if surging:
        total += sum((_value(x, resource) * x.surge for x in surging), Decimal(0))
        terms = _terms(((x.name, x.surge, _value(x, resource)) for x in surging), resource)
        detail += f", + a release's surge, {terms}"
    run = _largest_one_off(loads, resource)
    if run is not None and _value(run, resource) > 0:
        total += _value(run, resource)
        figure = _cores(run.cpu) if resource == CPU else str(run.memory)
        detail += f", + the largest one-off run, {run.what} {figure}"
    if reserve:
        figure = _cores(reserve) if resource == CPU else str(int(reserve))
        detail += f", + {figure} {reserve_text}"
    return total, detail


def _instance_problem(x: Load, resource: str, offered: Decimal, by: str, why: str = "") -> Problem:
    return Problem(
        f"{x.what} (one instance)", resource, _value(x, resource), offered, by, why, instance=True
    )


# ---------------------------------------------------------------------------------------------
# single-vm and compose: one machine


def _service_runs(app: AppSpec) -> list[tuple[str, Service]]:
    """(label, service) of every one-off run: release tasks and schedules, each with its
    service's resources."""
    runs = [(f"task {n}", app.services[t.service]) for n, t in app.tasks.items()]
    return runs + [(f"schedule {n}", app.services[s.service]) for n, s in app.schedules.items()]


def single_machine_loads(app: AppSpec, blueprint: str) -> list[Load]:
    """Every container the one machine runs, with what a release starts beside them: single-vm
    one new container of a stateless service, compose all of its replicas (module docstring)."""
    from blueprints.render.single_vm import rollout

    loads = []
    for name, svc in app.sorted_services():
        surge = 0
        if rollout(svc) == "surge":
            surge = svc.replicas if blueprint == "compose" else 1
        loads.append(Load(name, svc.replicas, Decimal(str(svc.cpu)), svc.memory, surge=surge))
    loads += [
        Load(label, 1, Decimal(str(svc.cpu)), svc.memory, steady=False, kind="")
        for label, svc in _service_runs(app)
    ]
    return loads


def _single_machine(app: AppSpec, settings: StackSettings, machine: Machine) -> Fit:
    where = (
        f"each of the primary and the spare ({machine.describe()})"
        if settings.blueprint == "single-vm"
        else f"the VM ({machine.describe()})"
    )
    loads = single_machine_loads(app, settings.blueprint)
    services = _steady(loads)
    problems: list[Problem] = []
    offered = {CPU: Decimal(machine.vcpu), MEMORY: Decimal(machine.memory_mib)}
    why = {
        CPU: "Docker refuses a CPU limit above the machine's CPUs",
        MEMORY: "a limit above the machine's memory is never reached",
    }
    for resource in (CPU, MEMORY):
        problems += [
            _instance_problem(x, resource, offered[resource], where, why[resource])
            for x in services
            if _value(x, resource) > offered[resource]
        ]
    reserve = Decimal(SINGLE_MACHINE_RESERVE_MIB)
    memory, detail = _peak(
        loads, MEMORY, False, reserve, "for the OS, Docker, the proxy and the agents"
    )
    if memory > machine.memory_mib and not any(p.resource == MEMORY for p in problems):
        problems.append(
            Problem("all services", MEMORY, memory, Decimal(machine.memory_mib), where, detail)
        )
    return Fit(
        blueprint=settings.blueprint,
        machine=machine,
        serving=1,
        cpu_needed=None,
        memory_needed=int(_total(services, MEMORY) + reserve),
        cpu_offered=Decimal(machine.vcpu),
        memory_offered=machine.memory_mib,
        problems=tuple(problems),
    )


# ---------------------------------------------------------------------------------------------
# nomad


def _mhz(cores: float) -> int:
    from blueprints.rungs.nomad.release import MHZ_PER_CORE

    return math.ceil(cores * MHZ_PER_CORE)


def nomad_loads(app: AppSpec, settings: StackSettings) -> list[Load]:
    """Every allocation the nomad rung runs, in cores (at the rung's MHz per core) and MiB; a
    group with a canary surges by one instance in a release."""
    from blueprints.rungs.nomad.release import (
        BACKUP_CPU,
        BACKUP_MEMORY,
        MHZ_PER_CORE,
        job_group,
        port_instances,
    )

    def cores(mhz: int) -> Decimal:
        return Decimal(mhz) / MHZ_PER_CORE

    loads = []
    instances = port_instances(app)  # once: counting them per service was quadratic
    for name, svc in app.sorted_services():
        group = job_group(app, name, svc, instances)
        task = group["task"]
        cpu, memory = task["cpu"], task["memory"]
        if group["wait"] is not None:
            # A prestart task that ends before the service starts: Nomad counts the larger.
            cpu, memory = max(cpu, NOMAD_WAIT_TASK[0]), max(memory, NOMAD_WAIT_TASK[1])
        where = "data node" if group["data_node"] else None
        surge = 1 if group["canary"] else 0
        loads.append(Load(name, svc.replicas, cores(cpu), memory, group=where, surge=surge))
    loads.append(
        Load(
            "ingress (Traefik)",
            1,
            cores(NOMAD_INGRESS[0]),
            NOMAD_INGRESS[1],
            group="data node",
            kind="",
        )
    )
    for label, svc in _service_runs(app):
        cpu = _mhz(svc.cpu) + NOMAD_RUN_WATCHDOG[0]
        memory = svc.memory + NOMAD_RUN_WATCHDOG[1]
        where = "data node" if svc.stateful else None
        loads.append(Load(label, 1, cores(cpu), memory, steady=False, group=where, kind=""))
    if app.backups.enabled and settings.backup_bucket is not None and app.data_size_gb:
        loads.append(
            Load(
                "backup",
                1,
                cores(BACKUP_CPU),
                BACKUP_MEMORY,
                steady=False,
                group="data node",
                kind="",
            )
        )
    return loads


def _cluster_checks(
    loads: list[Load],
    node: Mapping[str, Decimal],
    nodes: int,
    kind: str,
    machine: Machine,
    less: str,
    survives: str,
) -> list[Problem]:
    """The checks nomad and k8s share: the largest instance on one node, each group (with its
    surge and its largest one-off) on one node, everything (with a release's surge and the
    largest one-off) on all nodes, the steady load on the nodes left after losing one."""
    one = f"one {kind} ({machine.describe()}{less})"
    problems: list[Problem] = []
    for resource in (CPU, MEMORY):
        largest = max(loads, key=lambda x: (_value(x, resource), x.name), default=None)
        if largest is not None and _value(largest, resource) > node[resource]:
            problems.append(_instance_problem(largest, resource, node[resource], one))
            continue
        for group in sorted({x.group for x in loads if x.group}):
            members = [x for x in loads if x.group == group]
            needed, detail = _peak(members, resource, True)
            if needed > node[resource]:
                problems.append(
                    Problem(
                        f"what runs on the {group}", resource, needed, node[resource], one, detail
                    )
                )
        needed, detail = _peak(loads, resource, True)
        offered = node[resource] * nodes
        if needed > offered:
            problems.append(
                Problem(
                    "all services",
                    resource,
                    needed,
                    offered,
                    f"the {nodes} {kind}s ({machine.type}, "
                    f"{amount(resource, node[resource])} each)",
                    detail,
                )
            )
            continue
        steady = _steady(loads)
        needed = _total(steady, resource)
        offered = node[resource] * (nodes - 1)
        if needed > offered:
            problems.append(
                Problem(
                    f"after losing {survives}",
                    resource,
                    needed,
                    offered,
                    f"the other {nodes - 1} {kind}s ({machine.type}, "
                    f"{amount(resource, node[resource])} each)",
                    _terms(((x.name, x.count, _value(x, resource)) for x in steady), resource),
                )
            )
    return problems


def _cluster_fit(
    blueprint: str,
    loads: list[Load],
    node: Mapping[str, Decimal],
    count: int,
    who: str,
    machine: Machine,
    less: str,
    lost: str,
) -> Fit:
    """A cluster rung's fit: _cluster_checks' problems, and the steady load against `count`
    nodes of `node` each."""
    steady = _steady(loads)
    return Fit(
        blueprint=blueprint,
        machine=machine,
        serving=count,
        cpu_needed=_total(steady, CPU),
        memory_needed=int(_total(steady, MEMORY)),
        cpu_offered=node[CPU] * count,
        memory_offered=int(node[MEMORY] * count),
        problems=tuple(_cluster_checks(loads, node, count, who, machine, less, lost)),
    )


def _nomad(app: AppSpec, settings: StackSettings, machine: Machine) -> Fit:
    from blueprints.rungs.nomad.release import MHZ_PER_CORE

    node = {
        CPU: Decimal(machine.vcpu * MHZ_PER_CORE - NOMAD_RESERVED_CPU_MHZ) / MHZ_PER_CORE,
        MEMORY: Decimal(machine.memory_mib - NOMAD_RESERVED_MEMORY_MIB),
    }
    loads = nomad_loads(app, settings)
    less = (
        f", less the {NOMAD_RESERVED_CPU_MHZ} MHz and {NOMAD_RESERVED_MEMORY_MIB} MiB the Nomad "
        f"client keeps; {MHZ_PER_CORE} MHz per core"
    )
    return _cluster_fit(
        "nomad", loads, node, NOMAD_NODES, "nomad node", machine, less, "node-2 or node-3"
    )


# ---------------------------------------------------------------------------------------------
# k8s


def quantity_cpu(text: Any) -> Decimal:
    """A Kubernetes CPU quantity ('750m', '1', 0.5) in cores."""
    value = str(text)
    if value.endswith("m"):
        return Decimal(value[:-1]) / 1000
    return Decimal(value)


_BINARY = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024 * 1024}
_DECIMAL = {"k": 1000 / 1048576, "M": 1e6 / 1048576, "G": 1e9 / 1048576}


def quantity_mib(text: Any) -> int:
    """A Kubernetes memory quantity ('512Mi', '1Gi', '1G') in MiB, rounded up."""
    value = str(text)
    for table in (_BINARY, _DECIMAL):
        for suffix, factor in table.items():
            if value.endswith(suffix):
                return math.ceil(Decimal(value[: -len(suffix)]) * Decimal(str(factor)))
    return math.ceil(Decimal(value) / 1048576)


def _requests(containers: Iterable[Mapping[str, Any]]) -> list[tuple[Decimal, int]]:
    out = []
    for c in containers:
        requests = (c.get("resources") or {}).get("requests") or {}
        out.append(
            (
                quantity_cpu(requests.get("cpu", "0")),
                quantity_mib(requests.get("memory", "0")),
            )
        )
    return out


def pod_requests(pod: Mapping[str, Any]) -> tuple[Decimal, int]:
    """What the scheduler reserves for a pod: its containers' requests added up, or its largest
    init container's where that is more (init containers run before, one at a time)."""
    main = _requests(pod.get("containers") or [])
    init = _requests(pod.get("initContainers") or [])
    cpu = max([sum((c for c, _ in main), Decimal(0)), *(c for c, _ in init)])
    memory = max([sum(m for _, m in main), *(m for _, m in init)])
    return cpu, memory


def deployment_surge(spec: Mapping[str, Any], replicas: int) -> int:
    """The pods a Deployment's rollout starts beside the old ones: its RollingUpdate maxSurge (a
    count, or a share of the replicas rounded up; Kubernetes' default 25%), none on Recreate."""
    strategy = spec.get("strategy") or {}
    if strategy.get("type", "RollingUpdate") != "RollingUpdate":
        return 0
    value = (strategy.get("rollingUpdate") or {}).get("maxSurge", K8S_DEFAULT_MAX_SURGE)
    if isinstance(value, str) and value.endswith("%"):
        return math.ceil(replicas * Decimal(value[:-1]) / 100)
    return int(value)


def _colocated(pod: Mapping[str, Any]) -> str | None:
    """The claim whose other users a pod must share a node with (its required pod affinity)."""
    terms = ((pod.get("affinity") or {}).get("podAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or []
    keys = sorted(
        key.rsplit("/", 1)[-1]
        for term in terms
        for key in (term.get("labelSelector") or {}).get("matchLabels", {})
        if key != "app.kubernetes.io/instance"
    )
    return f"node of volume {', '.join(keys)}" if keys else None


def k8s_loads(app: AppSpec, settings: StackSettings) -> list[Load]:
    """Every pod the k8s rung's manifests ask for, with its requests, from the objects the
    component sends (the app's workloads, tasks, schedules and, with a bucket, the backups);
    a Deployment surges in a release by its maxSurge (a StatefulSet replaces pods in place)."""
    from blueprints.rungs.k8s import release

    objects = list(release.app_objects(app, settings.cloud))
    if app.backups.enabled and settings.backup_bucket is not None:
        objects += release.backup_objects(app)
    loads = []
    for obj in objects:
        kind, spec = obj.get("kind"), obj.get("spec") or {}
        name = str((obj.get("metadata") or {}).get("name"))
        surge = 0
        if kind in ("Deployment", "StatefulSet"):
            pod, count, steady = spec["template"]["spec"], int(spec.get("replicas", 1)), True
            if kind == "Deployment":
                surge = deployment_surge(spec, count)
        elif kind == "Job":
            pod, count, steady = spec["template"]["spec"], 1, False
        elif kind == "CronJob":
            pod, count, steady = spec["jobTemplate"]["spec"]["template"]["spec"], 1, False
        else:
            continue
        cpu, memory = pod_requests(pod)
        what = "service" if steady else str(kind)
        loads.append(Load(name, count, cpu, memory, steady, _colocated(pod), what, surge))
    return loads


def _k8s(app: AppSpec, settings: StackSettings, machine: Machine) -> Fit:
    from blueprints.rungs.k8s.rules import check_app

    if check_app(app):
        # The spec breaks the rung's own rules (which say so): no manifests to size yet.
        return Fit("k8s", machine, K8S_WORKERS, None, 0)
    node = {
        CPU: Decimal(machine.vcpu * 1000 - K8S_WORKER_RESERVE_MILLICORES) / 1000,
        MEMORY: Decimal(machine.memory_mib - K8S_WORKER_RESERVE_MIB),
    }
    loads = k8s_loads(app, settings)
    less = (
        f", less {K8S_WORKER_RESERVE_MILLICORES}m and {K8S_WORKER_RESERVE_MIB} MiB kept for the "
        "system"
    )
    return _cluster_fit("k8s", loads, node, K8S_WORKERS, "worker", machine, less, "a worker")


# ---------------------------------------------------------------------------------------------
# The check


RUNGS = {"single-vm": _single_machine, "compose": _single_machine, "nomad": _nomad, "k8s": _k8s}


def check(
    app: AppSpec, settings: StackSettings, tables: Mapping[str, costs.PriceTable] | None = None
) -> Fit:
    """The stack's capacity check (nothing is raised: see Fit.problems and Fit.unknown)."""
    machine = machine_of(settings, tables)
    if machine is None:
        return Fit(
            blueprint=settings.blueprint,
            machine=None,
            serving=serving(settings.blueprint),
            cpu_needed=None,
            memory_needed=0,
            unknown=_unknown(settings),
        )
    return RUNGS[settings.blueprint](app, settings, machine)


def _shown(spec: str) -> str:
    """The spec file as the user may have named it: an absolute path (`--spec` makes it one)
    under the working directory, relative to it."""
    path = Path(spec)
    if path.is_absolute() and path.is_relative_to(Path.cwd()):
        return str(path.relative_to(Path.cwd()))
    return spec


def stack_problems(app: AppSpec, settings: StackSettings) -> list[str]:
    """What a rung's check_settings adds: one line per shortfall, naming the spec (the stack
    file heads the line). With blueprints:overcommit a total's shortfall becomes a warning of
    the plan instead (as does a server type whose size is not known); one instance larger than
    a machine or node stays an error."""
    fit = check(app, settings)
    spec = _shown(settings.spec)
    relaxed = [p for p in fit.problems if settings.overcommit and not p.instance]
    lines = [p.line(spec) for p in fit.problems if p not in relaxed]
    warnings = [fit.unknown] if fit.unknown else []
    warnings += [f"{p.line(spec)} (planned anyway: blueprints:overcommit is true)" for p in relaxed]
    if warnings:
        import pulumi

        for warning in warnings:
            pulumi.log.warn(warning)
    return lines


def default_fits(app: AppSpec, blueprint: str) -> list[tuple[str, Fit]]:
    """The rung's check against its default server type on each cloud ("hcloud", "aws"), with
    default settings (no backup bucket): what `blueprints validate -b` reports. No plan."""
    from blueprints.settings import DEFAULT_SERVER_TYPE

    clouds = list(dict.fromkeys(cloud for rung, cloud in DEFAULT_SERVER_TYPE if rung == blueprint))
    return [
        (cloud, check(app, StackSettings.model_validate({"blueprint": blueprint, "target": cloud})))
        for cloud in clouds
    ]
