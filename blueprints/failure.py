"""What happens when a VM dies: who notices, who recovers, and roughly how long the app is down.

Each blueprint recovers with a different mechanism (a watchdog that promotes the spare; Nomad's
heartbeats; Kubernetes' node lifecycle), so each has a model here. Every number a model uses
comes from the stack's own settings (watchdog interval and threshold, spare mode, Nomad heartbeat
TTL and grace, Kubernetes grace period and tolerations), from the app spec (replicas, health
checks, which services hold data), or from the cloud's operation times below. Change a timeout in
the stack file and the estimate follows.

The cloud operation times are estimates of typical API and boot durations, not measurements (no
figure in CLOUD_TIMES was timed on a real cloud); they are kept in one table so they are easy to
question and to change. The single-VM model (blueprints/rungs/single_vm/failure.py) is the one
figure `blueprints compare`, the README and scripts/drill.py give; a drill that measured its own
operation times passes them to its `single_vm_recovery` and gets the model's figure for the same
parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from blueprints.settings import StackSettings
from blueprints.spec import AppSpec

# What each cloud operation time is (seconds). The single-VM promotion uses all but `container`;
# the nomad and k8s models use `container`.
OPERATIONS: dict[str, str] = {
    "api": "one call of the promotion to the cloud API: a state read (servers, volume, IP), "
    "a lock read or write, the cloud's clock",
    "power_off": "hard power-off of the dead primary until the cloud reports it off (the fence)",
    "detach": "the data volume detached from the fenced primary",
    "attach": "the data volume attached to the spare",
    "boot": "a powered-off spare from power-on until its OS is up (cold spare only)",
    "pull": "the release's images pulled onto a node that does not have them (cold spare only)",
    "app_start": "volume attached to a running node until the app's containers have started: "
    "the device appears, /srv/data is mounted, the release agent activates the release on the "
    "volume, the containers start from images already on the node (PostgreSQL replays its WAL)",
    "ip_move": "the floating IP taken off the old node and assigned to the new one, routed",
    "container": "an app container started from a cached image until its first health check runs",
}

# Seconds, per cloud. ESTIMATES of typical durations, not measurements. Hetzner: actions on a
# small server in one location; AWS: force-stop of an EBS-backed instance, EBS and Elastic IP
# operations in one availability zone. `boot` is a node that booted before; a cold spare whose
# first boot was cut short by parking also runs the rest of cloud-init then (not counted here).
# `pull` depends on the images' size and the registry: a few hundred MB from a nearby registry.
CLOUD_TIMES: dict[str, dict[str, float]] = {
    "hcloud": {
        "api": 0.3,
        "power_off": 5,
        "detach": 5,
        "attach": 5,
        "boot": 40,
        "pull": 20,
        "app_start": 10,
        "ip_move": 5,
        "container": 10,
    },
    "aws": {
        "api": 0.3,
        "power_off": 30,
        "detach": 10,
        "attach": 10,
        "boot": 45,
        "pull": 20,
        "app_start": 10,
        "ip_move": 5,
        "container": 10,
    },
}

# Kubernetes' attach/detach controller waits this long before it force-detaches a volume from
# a node that stopped answering (kube-controller-manager's maxWaitForUnmountDuration, fixed).
K8S_FORCE_DETACH = 360

SPARE_MODES = ("warm", "cold")


def seconds_text(seconds: float | None) -> str:
    """83 -> '83 s', 66.6 -> '66.6 s', None (a person must act) -> 'manual'."""
    if seconds is None:
        return "manual"
    return f"{round(seconds, 1):g} s"


def _tenths(seconds: float) -> float | int:
    """Whole seconds as an int, anything else to a tenth of a second."""
    value = round(float(seconds), 1)
    return int(value) if value.is_integer() else value


@dataclass(frozen=True)
class Step:
    what: str
    seconds: float


@dataclass(frozen=True)
class Scenario:
    """One VM dies; `steps` add up to the app's downtime, or recovery needs a person."""

    dies: str
    steps: tuple[Step, ...]
    automatic: bool
    effect: str  # what users see meanwhile

    @property
    def seconds(self) -> float | None:
        return _tenths(sum(s.seconds for s in self.steps)) if self.automatic else None


@dataclass(frozen=True)
class FailureModel:
    detects: str
    recovers: str
    scenarios: tuple[Scenario, ...]
    single_points: tuple[str, ...]
    # What the model needs running that no rendered file starts (single-vm's watchdog).
    outside: tuple[str, ...] = ()

    @property
    def worst(self) -> Scenario:
        """The VM whose death costs the most (a manual recovery beats any number)."""
        return max(self.scenarios, key=lambda s: (not s.automatic, s.seconds or 0))

    @property
    def best(self) -> Scenario:
        return min(self.scenarios, key=lambda s: (not s.automatic, s.seconds or 0))


def health_wait(app: AppSpec) -> int:
    """Until the public service's first passing health check after it starts."""
    services = [svc for _, svc in app.sorted_services()]
    public = [s for s in services if s.public_http_ports or s.public_tcp_ports]
    svc = (public or services)[0]
    return int(svc.health.interval) if svc.health else 0


def cloud_times(cloud: str, times: Mapping[str, float] | None = None) -> dict[str, float]:
    """CLOUD_TIMES of `cloud`, with `times` (e.g. measured ones) in place of any it names."""
    unknown = sorted(set(times or {}) - set(OPERATIONS))
    if unknown:
        raise ValueError(
            f"unknown cloud operation {', '.join(unknown)}; known: {', '.join(OPERATIONS)}"
        )
    return {**CLOUD_TIMES[cloud], **(times or {})}


def _single_vm(settings: StackSettings, app: AppSpec, times: dict[str, float]) -> FailureModel:
    # The single-vm rung keeps its model in its own package (blueprints/rungs/single_vm/).
    from blueprints.rungs.single_vm.failure import failure_model as single_vm_model

    return single_vm_model(settings, app, times)


def _compose(settings: StackSettings, app: AppSpec, times: dict[str, float]) -> FailureModel:
    return FailureModel(
        detects="nothing, for a dead VM (autoheal only restarts unhealthy containers)",
        recovers="a person, who restarts the VM or rebuilds it "
        "(`pulumi up --replace` on the server)",
        scenarios=(
            Scenario(
                "the VM",
                (),
                False,
                "app down until someone rebuilds the VM",
            ),
        ),
        single_points=("the VM", "the data volume"),
    )


def _nomad(settings: StackSettings, app: AppSpec, times: dict[str, float]) -> FailureModel:
    # The nomad rung keeps its model in its own package (blueprints/rungs/nomad/failure.py).
    from blueprints.rungs.nomad.failure import failure_model as nomad_model

    return nomad_model(settings, app, times)


def _k8s(settings: StackSettings, app: AppSpec, times: dict[str, float]) -> FailureModel:
    # The k8s rung keeps its model in its own package (blueprints/rungs/k8s/failure.py).
    from blueprints.rungs.k8s.failure import failure_model as k8s_model

    return k8s_model(settings, app, times)


FAILURE_MODELS: dict[str, Callable[[StackSettings, AppSpec, dict[str, float]], FailureModel]] = {
    "single-vm": _single_vm,
    "compose": _compose,
    "nomad": _nomad,
    "k8s": _k8s,
}


def failure_model(settings: StackSettings, app: AppSpec) -> FailureModel:
    return FAILURE_MODELS[settings.blueprint](settings, app, CLOUD_TIMES[settings.cloud])
