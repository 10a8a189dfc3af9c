"""The k8s rung's failure model: a node dies, the controller manager notices from missed
heartbeats and evicts its pods after the tolerations; stateful pods wait for someone."""

from __future__ import annotations

from blueprints.failure import K8S_FORCE_DETACH, FailureModel, Scenario, Step, health_wait
from blueprints.settings import StackSettings
from blueprints.spec import AppSpec


def failure_model(settings: StackSettings, app: AppSpec, times: dict[str, int]) -> FailureModel:
    """A node dies: who notices, who recovers, and how long the app is down (see
    blueprints.failure for the other rungs and the cloud times)."""
    grace = Step(
        f"node NotReady after --node-monitor-grace-period {settings.node_monitor_grace_period}s",
        settings.node_monitor_grace_period,
    )
    evict = Step(
        f"pods evicted after unreachable toleration {settings.unreachable_toleration_seconds}s",
        settings.unreachable_toleration_seconds,
    )
    start = Step("replacement pods start on a live worker", times["container"])
    health = Step("first passing readiness check", health_wait(app))
    stateful = [name for name, s in app.sorted_services() if s.stateful]
    worker_steps = (grace, evict, start, health)
    scenarios = [
        Scenario(
            "a control-plane node",
            (),
            True,
            "nothing for the app; etcd keeps quorum with 2 of 3",
        ),
        Scenario(
            "a worker without stateful pods",
            worker_steps,
            True,
            "replicas on live workers keep serving; single replicas wait for eviction",
        ),
    ]
    if stateful:
        scenarios.append(
            Scenario(
                f"the worker running {', '.join(stateful)}",
                (),
                False,
                "a StatefulSet pod on an unreachable node is never replaced on its own: "
                "someone deletes the node or the pod, then the volume detaches "
                f"(up to {K8S_FORCE_DETACH}s)",
            )
        )
    return FailureModel(
        detects="kube-controller-manager, from missed node heartbeats (kubelet leases)",
        recovers="taint-based eviction, then the controllers recreate pods on live workers",
        scenarios=tuple(scenarios),
        single_points=(
            ("the stateful pods' volume",)
            + (("cp-1 as the kubeconfig's API endpoint",) if settings.cloud == "hcloud" else ())
        ),
    )
