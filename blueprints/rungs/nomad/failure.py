"""The nomad rung's failure model: a node dies, the Nomad servers notice from missed heartbeats
and the scheduler places its allocations again; node-1 holds the data volume and the ingress."""

from __future__ import annotations

from blueprints.failure import FailureModel, Scenario, Step, health_wait
from blueprints.settings import StackSettings
from blueprints.spec import AppSpec


def failure_model(settings: StackSettings, app: AppSpec, times: dict[str, int]) -> FailureModel:
    """A node dies: who notices, who recovers, and how long the app is down (see
    blueprints.failure for the other rungs and the cloud times)."""
    ttl = settings.min_heartbeat_ttl
    # A server arms each client's timer for TTL plus a random stagger of up to one TTL, plus
    # the grace: the worst case is 2 x TTL + grace.
    down = Step(
        f"node marked down: up to 2 x heartbeat TTL {ttl}s + grace {settings.heartbeat_grace}s",
        2 * ttl + settings.heartbeat_grace,
    )
    lost = Step(f"allocations lost after {settings.lost_after}s", settings.lost_after)
    restart = Step("replacement containers start on a live node", times["container"])
    health = Step("first passing health check", health_wait(app))
    stateless = tuple(s for s in (down, lost, restart, health) if s.seconds or s is down)
    public = [s for _, s in app.sorted_services() if s.public_http_ports or s.public_tcp_ports]
    all_replicated = public and all(s.replicas >= 2 for s in public)
    other = Scenario(
        "node-2 or node-3",
        stateless,
        True,
        "requests to the dead node's instances fail until they are replaced"
        if all_replicated
        else "a single-instance service is down until it is replaced",
    )
    stateful = [name for name, s in app.sorted_services() if s.stateful]
    node1 = Scenario(
        "node-1",
        (),
        False,
        "ingress (Traefik) and "
        + (", ".join(stateful) if stateful else "the host volume")
        + " are pinned to node-1: down until it is rebuilt",
    )
    return FailureModel(
        detects="the Nomad servers, from missed client heartbeats",
        recovers="the Nomad scheduler, which replaces lost allocations on live nodes",
        scenarios=(other, node1),
        single_points=("node-1 (data volume, ingress)", "the data volume"),
    )
