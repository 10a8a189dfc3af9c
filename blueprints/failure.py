"""What happens when a VM dies: who notices, who recovers, and roughly how long the app is down.

Each blueprint recovers with a different mechanism (a watchdog that promotes the spare; Nomad's
heartbeats; Kubernetes' node lifecycle), so each has a model here. Every number a model uses
comes from the stack's own settings (watchdog interval and threshold, Nomad heartbeat TTL and
grace, Kubernetes grace period and tolerations), from the app spec (replicas, health checks,
which services hold data), or from the cloud's operation times below. Change a timeout in the
stack file and the estimate follows.

The cloud operation times are estimates of typical API and boot durations, not measurements;
they are kept in one table so they are easy to question and to change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from blueprints.settings import StackSettings
from blueprints.spec import AppSpec

# Seconds, per cloud. `boot`: power-on to SSH/cloud-init done for a stock Ubuntu image;
# `container`: an app container started from a cached image until its first health check runs.
CLOUD_TIMES: dict[str, dict[str, int]] = {
    "hcloud": {"boot": 40, "power_off": 5, "detach": 5, "attach": 5, "ip_move": 5, "container": 10},
    "aws": {"boot": 45, "power_off": 30, "detach": 10, "attach": 10, "ip_move": 5, "container": 10},
}

# Kubernetes' attach/detach controller waits this long before it force-detaches a volume from
# a node that stopped answering (kube-controller-manager's maxWaitForUnmountDuration, fixed).
K8S_FORCE_DETACH = 360


@dataclass(frozen=True)
class Step:
    what: str
    seconds: int


@dataclass(frozen=True)
class Scenario:
    """One VM dies; `steps` add up to the app's downtime, or recovery needs a person."""

    dies: str
    steps: tuple[Step, ...]
    automatic: bool
    effect: str  # what users see meanwhile

    @property
    def seconds(self) -> int | None:
        return sum(s.seconds for s in self.steps) if self.automatic else None


@dataclass(frozen=True)
class FailureModel:
    detects: str
    recovers: str
    scenarios: tuple[Scenario, ...]
    single_points: tuple[str, ...]
    # What the model needs running outside the VMs (a moving part no rendered file shows).
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


def _single_vm(settings: StackSettings, app: AppSpec, times: dict[str, int]) -> FailureModel:
    detect = settings.watch_interval * settings.watch_failures + settings.probe_timeout
    # The promotion boots the spare first and fences/moves the volume while it boots.
    moves = times["power_off"] + times["detach"] + times["attach"]
    steps = (
        Step(
            f"watchdog: {settings.watch_failures} failed probes, "
            f"{settings.watch_interval}s apart, {settings.probe_timeout}s timeout",
            detect,
        ),
        Step(
            "spare boots while the primary is fenced and the volume moves",
            max(times["boot"], moves),
        ),
        Step("app containers start on the spare", times["container"]),
        Step("first passing health check", health_wait(app)),
        Step("floating IP moves to the spare", times["ip_move"]),
    )
    return FailureModel(
        detects="`blueprints watch`, probing the health URL from outside the VMs",
        recovers="`blueprints promote` (fence the primary, move the volume, boot the spare, "
        "move the IP)",
        scenarios=(
            Scenario("primary", steps, True, "app unreachable until the spare answers"),
            Scenario("spare (parked)", (), True, "nothing; the spare was off"),
        ),
        single_points=(
            "the watchdog process (run it outside both VMs)",
            "the data volume (one location, no replica)",
            "the cloud API during a promotion",
        ),
        outside=("blueprints watch (the watchdog, outside both VMs)",),
    )


def _compose(settings: StackSettings, app: AppSpec, times: dict[str, int]) -> FailureModel:
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


def _nomad(settings: StackSettings, app: AppSpec, times: dict[str, int]) -> FailureModel:
    # The nomad rung keeps its model in its own package (blueprints/rungs/nomad/failure.py).
    from blueprints.rungs.nomad.failure import failure_model as nomad_model

    return nomad_model(settings, app, times)


def _k8s(settings: StackSettings, app: AppSpec, times: dict[str, int]) -> FailureModel:
    # The k8s rung keeps its model in its own package (blueprints/rungs/k8s/failure.py).
    from blueprints.rungs.k8s.failure import failure_model as k8s_model

    return k8s_model(settings, app, times)


FAILURE_MODELS: dict[str, Callable[[StackSettings, AppSpec, dict[str, int]], FailureModel]] = {
    "single-vm": _single_vm,
    "compose": _compose,
    "nomad": _nomad,
    "k8s": _k8s,
}


def failure_model(settings: StackSettings, app: AppSpec) -> FailureModel:
    return FAILURE_MODELS[settings.blueprint](settings, app, CLOUD_TIMES[settings.cloud])
