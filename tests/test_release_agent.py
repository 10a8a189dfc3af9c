"""The release agent (blueprints/release/agent.py) against a fake node.

The fake records every command, keeps the state a node would have (active systemd units, compose
containers, images) and answers the agent's questions from it; its clock moves only when the
agent sleeps or a health wait takes time. Files are real, under a scratch root.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from pathlib import Path

import pytest
import yaml

from blueprints.release import agent

SCRIPTS = "/usr/local/lib/blueprints/app"
UNITS = "/etc/systemd/system"
STATE = "/srv/data/.blueprints"
HEALTH_INTERVAL = 10


# --- documents ---------------------------------------------------------------------------------


def service(name, image, replicas=1, rollout="surge", budget=30, extra=""):
    return {
        "name": name,
        "image": image,
        "replicas": replicas,
        "rollout": rollout,
        "digest": hashlib.sha256(f"{name} {image} {extra}".encode()).hexdigest()[:16],
        "health": None if budget is None else {"budget": budget},
    }


def caddy_json(services):
    routes = []
    for svc in services:
        if svc["name"] != "web":
            continue
        dials = [{"dial": f"web-{n}:8000"} for n in range(1, svc["replicas"] + 2)]
        routes.append(
            {
                "handle": [
                    {
                        "handler": "reverse_proxy",
                        "upstreams": dials,
                        "health_checks": {
                            "active": {"uri": "/healthz", "interval": f"{HEALTH_INTERVAL}s"}
                        },
                    }
                ]
            }
        )
    return json.dumps({"apps": {"http": {"servers": {"app": {"routes": routes}}}}}, indent=1)


def single_vm_files(services):
    files = {}
    for svc in services:
        name = svc["name"]
        files[f"{UNITS}/app-{name}@.service"] = {"mode": "0644", "text": f"[Unit]\n# {name}\n"}
        files[f"{SCRIPTS}/run-{name}"] = {
            "mode": "0755",
            "text": f"#!/bin/bash\nimage={svc['image']}\n",
        }
        if svc["health"] is not None:
            files[f"{SCRIPTS}/health-{name}"] = {"mode": "0755", "text": "#!/bin/bash\n"}
    files[f"{UNITS}/app.target"] = {"mode": "0644", "text": "[Unit]\n"}
    if any(s["name"] == "web" for s in services):
        files["/etc/blueprints/caddy.json"] = {"mode": "0644", "text": caddy_json(services)}
    return files


def compose_files(services, refresh="1s"):
    compose = {
        "name": "shop",
        "services": {s["name"]: {"image": s["image"]} for s in services},
    }
    if "web" in compose["services"]:
        compose["services"]["web"]["labels"] = {"blueprints.proxy": "web"}
    compose["services"]["blueprints_proxy"] = {"image": "caddy:2.8.4"}
    caddy = {
        "apps": {
            "http": {
                "servers": {
                    "app": {
                        "routes": [
                            {
                                "handle": [
                                    {
                                        "handler": "reverse_proxy",
                                        "dynamic_upstreams": {
                                            "source": "a",
                                            "name": "web",
                                            "port": "8000",
                                            "refresh": refresh,
                                        },
                                    }
                                ]
                            }
                        ]
                    }
                }
            }
        }
    }
    return {
        "/etc/blueprints/compose/compose.yaml": {"mode": "0644", "text": yaml.safe_dump(compose)},
        "/etc/blueprints/caddy.json": {"mode": "0644", "text": json.dumps(caddy)},
        f"{UNITS}/app-autoheal.timer": {"mode": "0644", "text": "[Timer]\nOnUnitActiveSec=10s\n"},
    }


def secrets_doc(values: dict[str, str]) -> tuple[str, str]:
    files = {
        f"/etc/blueprints/secrets/{name}.env": {"mode": "0600", "text": text}
        for name, text in values.items()
    }
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    body = {"format": agent.SECRETS_FORMAT, "digest": digest, "files": files}
    return digest, yaml.safe_dump(body, sort_keys=True)


def release(
    services, *, rung="single-vm", secrets=None, files=None, units=None, volumes=(), tasks=None
):
    if files is None:
        files = single_vm_files(services) if rung == "single-vm" else compose_files(services)
        for task in tasks or []:
            if task["argv"] and task["argv"][0].startswith(SCRIPTS + "/"):
                files[task["argv"][0]] = {"mode": "0755", "text": "#!/bin/bash\n"}
    body = {
        "format": agent.RELEASE_FORMAT,
        "rung": rung,
        "app": "shop",
        "secrets": secrets,
        "volumes": sorted(volumes),
        "units": list(units or []),
        "services": services,
        "files": files,
    }
    if tasks is not None:
        body["tasks"] = tasks
    body["release"] = agent.release_id(body)
    return body["release"], yaml.safe_dump(body, sort_keys=True)


def shop(web_image="ghcr.io/example/shop-web:1.4.2", web_replicas=2, worker_extra=""):
    """The example app's services in dependency order."""
    return [
        service("postgres", "postgres:16.4", rollout="restart", budget=60),
        service("redis", "redis:7.4-alpine", budget=20),
        service("web", web_image, replicas=web_replicas, budget=30),
        service("worker", "ghcr.io/example/shop-web:1.4.2", budget=None, extra=worker_extra),
    ]


# --- the fake node -----------------------------------------------------------------------------


class FakeNode(agent.Node):
    def __init__(self, root: Path, rung: str = "single-vm"):
        super().__init__(str(root))
        self.clock = 1000.0
        self.commands: list[tuple[float, list[str]]] = []
        self.active: set[str] = set()
        self.mounted = True
        self.broken: set[str] = set()  # images whose containers never become healthy
        self.broken_slots: set[tuple[str, int, str]] = set()  # (service, slot, image) likewise
        self.unpullable: set[str] = set()
        self.missing: set[str] = set()  # images not present locally
        self.containers: dict[str, dict] = {}  # compose
        self.task_results: dict[str, agent.Result] = {}  # task name -> what its command returns
        self.envs: list[dict[str, str]] = []  # the extra environment of each command
        self._ids = 0
        (root / "srv/data").mkdir(parents=True)
        if rung == "compose":
            self.makedirs("/usr/local/sbin")
            self.write(agent.WRAPPER, "#!/bin/bash\n", 0o755)

    # time and mounts
    def now(self) -> float:
        return self.clock

    def sleep(self, seconds: float) -> None:
        self.clock += max(seconds, 0)

    def is_mounted(self, path: str) -> bool:
        return self.mounted

    # commands
    def argv_log(self) -> list[list[str]]:
        return [argv for _, argv in self.commands]

    def changes(self) -> list[str]:
        """Every command that changes something (no queries), as one string each."""
        queries = ("is-active", "inspect", "ps", "pull", "daemon-reload")
        return [
            " ".join(argv)
            for argv in self.argv_log()
            if not any(q in argv[:3] for q in queries)
            and not (len(argv) > 1 and argv[1] == "ready")
        ]

    def run(self, argv, input=None, timeout=None):
        self.commands.append((self.clock, list(argv)))
        self.envs.append(dict(self.env))
        self.clock += 0.1
        task = re.fullmatch(rf"{SCRIPTS}/task-([a-z0-9-]+)", argv[0])
        if task:
            assert self.exists(argv[0]), "a task runs after the release's files are installed"
            result = self.task_results.get(task.group(1), agent.Result(0, "done\n"))
            if result.code == 124:
                self.clock += timeout
            return result
        if argv[0] == "systemctl":
            return self._systemctl(argv[1:])
        if argv[0] == "docker":
            return self._docker(argv[1:])
        if argv[0] == agent.WRAPPER:
            return self._compose(argv[1:])
        match = re.fullmatch(rf"{SCRIPTS}/health-([a-z0-9-]+)", argv[0])
        if match and argv[1] == "ready":
            return self._ready(match.group(1), int(argv[2]), int(argv[3]))
        raise AssertionError(f"unexpected command {argv}")

    def _image_of(self, name: str) -> str:
        run = self.read(f"{SCRIPTS}/run-{name}") or ""
        return re.search(r"image=(\S+)", run).group(1)

    def _systemctl(self, args):
        verb = args[0]
        if verb == "is-active":
            return agent.Result(0 if args[-1] in self.active else 3, "")
        if verb in ("start", "restart"):
            self.active.add(args[-1])
        elif verb == "stop":
            self.active.discard(args[-1])
        return agent.Result(0, "")

    def _ready(self, name: str, slot: int, budget: int):
        unit = f"app-{name}@{slot}.service"
        if unit not in self.active:
            self.clock += budget
            return agent.Result(1, f"{name}-{slot}: container not running\n")
        if (
            self._image_of(name) in self.broken
            or (name, slot, self._image_of(name)) in self.broken_slots
        ):
            self.clock += budget
            return agent.Result(1, f"{name}-{slot}: HTTP 404 from /healthz\n")
        self.clock += 2
        return agent.Result(0, f"{name}-{slot}: healthy\n")

    def _docker(self, args):
        if args[0] == "pull":
            return agent.Result(1 if args[-1] in self.unpullable else 0, "", "no route to host")
        if args[:2] == ["image", "inspect"]:
            return agent.Result(1 if args[-1] in self.missing else 0, "[]")
        if args[0] == "inspect" and args[1] == "--format":
            name, slot = args[-1].rsplit("-", 1)
            running = f"app-{name}@{slot}.service" in self.active
            return agent.Result(0 if running else 1, "true 2024-01-01T00:00:00Z\n")
        if args[0] == "ps":
            service = next(a.rsplit("=", 1)[1] for a in args if "compose.service=" in a)
            ids = [c for c, v in self.containers.items() if v["service"] == service]
            return agent.Result(0, "".join(i + "\n" for i in ids))
        if args[0] == "inspect":
            return agent.Result(0, json.dumps([self._inspect(c) for c in args[1:]]))
        if args[0] == "stop":
            self.containers[args[-1]]["running"] = False
            return agent.Result(0, "")
        if args[:2] == ["network", "connect"]:
            assert args[2] == "--alias"
            c = self.containers[args[-1]]
            assert self._inspect(args[-1])["State"]["Health"]["Status"] == "healthy", args
            c["networks"].append(args[-2])
            return agent.Result(0, "")
        if args[0] == "rm":
            self.containers.pop(args[-1], None)
            return agent.Result(0, "")
        raise AssertionError(f"unexpected docker command {args}")

    # compose
    def _compose_image(self, name: str) -> str:
        doc = yaml.safe_load(self.read("/etc/blueprints/compose/compose.yaml"))
        return doc["services"][name]["image"]

    def _labels(self, name: str) -> dict:
        doc = yaml.safe_load(self.read("/etc/blueprints/compose/compose.yaml"))
        return doc["services"][name].get("labels") or {}

    def _create(self, name: str) -> str:
        self._ids += 1
        number = 1 + max(
            (c["number"] for c in self.containers.values() if c["service"] == name), default=0
        )
        cid = f"{self._ids:064x}"
        self.containers[cid] = {
            "service": name,
            "number": number,
            "image": self._compose_image(name),
            "running": True,
            "created": self.clock,
            "labels": self._labels(name),
            "networks": ["shop_default"],
        }
        return cid

    def _inspect(self, cid: str) -> dict:
        c = self.containers[cid]
        age = self.clock - c["created"]
        if c["image"] in self.broken:
            status = "unhealthy" if age > 20 else "starting"
        else:
            status = "healthy" if age >= 5 else "starting"
        return {
            "Id": cid,
            "Name": f"/shop-{c['service']}-{c['number']}",
            "Config": {
                "Labels": {
                    "com.docker.compose.container-number": str(c["number"]),
                    "com.docker.compose.service": c["service"],
                    **c["labels"],
                }
            },
            "NetworkSettings": {"Networks": {net: {} for net in c["networks"]}},
            "State": {
                "Running": c["running"],
                "StartedAt": str(c["created"]),
                "Health": {"Status": status, "Log": [{"ExitCode": 1, "Output": "HTTP 404"}]},
            },
        }

    def _compose(self, args):
        if args[0] == "pull":
            return agent.Result(0, "")
        if args[0] == "exec":
            return agent.Result(0, "")
        if args[:2] == ["up", "--detach"] and args[2] != "--no-deps":
            # Every service named, each scaled (a first release).
            for flag in (a for a in args if a.startswith("--scale=")):
                name, count = flag[len("--scale=") :].split("=")
                self._compose(["up", "--detach", "--no-deps", "--scale", f"{name}={count}", name])
            return agent.Result(0, "")
        assert args[:3] == ["up", "--detach", "--no-deps"], args
        name = args[-1]
        mine = sorted(
            (cid for cid, c in self.containers.items() if c["service"] == name),
            key=lambda cid: self.containers[cid]["number"],
        )
        if "--scale" not in args:
            if not mine:
                self._create(name)
            return agent.Result(0, "")
        count = int(args[args.index("--scale") + 1].split("=")[1])
        if "--force-recreate" in args:
            for cid in mine:
                del self.containers[cid]
            mine = []
        while len(mine) > count:
            del self.containers[mine.pop()]
        while len(mine) < count:
            mine.append(self._create(name))
        return agent.Result(0, "")


def run_agent(node: FakeNode, *argv: str, stdin: str = ""):
    out, err = io.StringIO(), io.StringIO()
    code = agent.main(list(argv), node=node, stdin=io.StringIO(stdin), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def node(tmp_path):
    return FakeNode(tmp_path / "root")


def deployed(node: FakeNode, services, **kwargs) -> str:
    rid, text = release(services, **kwargs)
    code, out, err = run_agent(node, "deploy", stdin=text)
    assert code == 0, out + err
    return rid


def file_state(root: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mode, p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --- single-vm ---------------------------------------------------------------------------------


def test_first_release_starts_every_service_and_becomes_current(node):
    rid = deployed(node, shop())
    assert (Path(node.root) / STATE.lstrip("/") / "current").read_text() == rid + "\n"
    run_web = Path(node.root) / f"{SCRIPTS}/run-web".lstrip("/")
    assert run_web.stat().st_mode & 0o777 == 0o755
    for unit in ("app-postgres@1", "app-redis@1", "app-web@1", "app-web@2", "app-worker@1"):
        assert f"{unit}.service" in node.active
    assert {"app.target", "blueprints-caddy.service"} <= node.active
    # Dependencies first: the document's order.
    starts = [a[-1] for a in node.argv_log() if a[:3] == ["systemctl", "start", "--no-block"]]
    assert starts.index("app-postgres@1.service") < starts.index("app-web@1.service")


def test_an_unchanged_service_is_not_touched(node):
    deployed(node, shop())
    node.commands.clear()
    deployed(node, shop(web_image="ghcr.io/example/shop-web:1.4.3"))
    touched = [
        c for c in node.argv_log() if any(re.search(r"app-(postgres|redis|worker)@", a) for a in c)
    ]
    assert touched == []
    # Not even the images of unchanged services are pulled.
    pulls = [a[-1] for a in node.argv_log() if a[:2] == ["docker", "pull"]]
    assert pulls == ["ghcr.io/example/shop-web:1.4.3"]


def test_surge_rollout_order_and_the_proxy_sees_each_new_replica(node):
    deployed(node, shop())
    node.commands.clear()
    code, out, _ = run_agent(
        node, "deploy", stdin=release(shop(web_image="ghcr.io/example/shop-web:1.4.3"))[1]
    )
    assert code == 0
    steps = [
        (t, " ".join(a[1:] if a[0] == "systemctl" else [a[0].rsplit("/", 1)[-1], *a[1:3]]))
        for t, a in node.commands
        if ("web@" in " ".join(a) and a[1] in ("start", "stop")) or a[0].endswith("health-web")
    ]
    assert [s for _, s in steps] == [
        "start --no-block app-web@3.service",
        "health-web ready 3",
        "stop app-web@1.service",
        "start --no-block app-web@1.service",
        "health-web ready 1",
        "stop app-web@2.service",
        "start --no-block app-web@2.service",
        "health-web ready 2",
        "stop app-web@3.service",
    ]
    at = {s: t for t, s in steps}
    # web-2 (the last old replica) stops only once the proxy checked the surge replica again,
    # and the surge replica stops once it checked the new web-1.
    ready_3 = at["health-web ready 3"] + 2  # the fake's probe takes 2 s
    ready_1 = at["health-web ready 1"] + 2
    assert at["stop app-web@2.service"] >= ready_3 + HEALTH_INTERVAL
    assert at["stop app-web@3.service"] >= ready_1 + HEALTH_INTERVAL
    # web-1 goes right away: web-2 (old) still serves.
    assert at["stop app-web@1.service"] < ready_3 + 1
    # A new container takes a slot only once the proxy has had a check to see it empty: the
    # surge slot (found empty: its last container may have gone just before) and each slot
    # emptied by the rollout.
    started = node.commands[0][0]
    assert at["start --no-block app-web@3.service"] >= started + HEALTH_INTERVAL
    for slot in (1, 2):
        gap = at[f"start --no-block app-web@{slot}.service"] - at[f"stop app-web@{slot}.service"]
        assert gap >= HEALTH_INTERVAL
    assert "web: replica 2 of 2 healthy" in out
    assert re.search(r"^\[\s*\d+\.\d+s\] web: surge replica 3 healthy$", out, re.M)
    assert node.active >= {"app-web@1.service", "app-web@2.service"}
    assert "app-web@3.service" not in node.active


def test_single_replica_surge_keeps_a_replica_serving_at_every_step(node):
    deployed(node, shop(web_replicas=1))
    node.commands.clear()
    deployed(node, shop(web_image="ghcr.io/example/shop-web:1.4.3", web_replicas=1))
    events = [
        " ".join(a[1:])
        for a in node.argv_log()
        if a[0] == "systemctl" and "web@" in " ".join(a) and a[1] in ("start", "stop")
    ]
    assert events == [
        "start --no-block app-web@2.service",
        "stop app-web@1.service",
        "start --no-block app-web@1.service",
        "stop app-web@2.service",
    ]


def test_a_replica_only_change_starts_or_stops_the_difference(node):
    deployed(node, shop())
    node.commands.clear()
    deployed(node, shop(web_replicas=4))
    assert [c for c in node.changes() if "web@" in c] == [
        "systemctl start --no-block app-web@3.service",
        "systemctl start --no-block app-web@4.service",
    ]
    node.commands.clear()
    deployed(node, shop(web_replicas=1))
    assert [c for c in node.changes() if "web@" in c] == [
        "systemctl stop app-web@4.service",
        "systemctl stop app-web@3.service",
        "systemctl stop app-web@2.service",
    ]
    assert not any(a[0].endswith("health-web") for a in node.argv_log())


def test_a_stateful_service_is_stopped_then_started(node):
    deployed(node, shop())
    node.commands.clear()
    services = shop()
    services[0] = service("postgres", "postgres:16.5", rollout="restart", budget=60)
    deployed(node, services)
    assert [c for c in node.changes() if "postgres" in c] == [
        "systemctl stop app-postgres@1.service",
        "systemctl start --no-block app-postgres@1.service",
    ]


def test_an_unhealthy_release_is_rolled_back_with_its_reason(node):
    previous = deployed(node, shop())
    before = (Path(node.root) / f"{SCRIPTS}/run-web".lstrip("/")).read_text()
    node.broken.add("ghcr.io/example/shop-web:broken")
    node.commands.clear()
    rid, text = release(shop(web_image="ghcr.io/example/shop-web:broken"))
    code, out, err = run_agent(node, "deploy", stdin=text)
    assert code == 1
    assert err.strip() == (
        f"release {rid}: web did not become healthy within 30 s "
        f"(web-3: HTTP 404 from /healthz); rolled back to {previous}"
    )
    # Only the surge replica was tried; the old replicas served throughout.
    web = [c for c in node.changes() if "web@" in c]
    assert web == [
        "systemctl start --no-block app-web@3.service",
        "systemctl stop app-web@3.service",
    ]
    assert (Path(node.root) / f"{SCRIPTS}/run-web".lstrip("/")).read_text() == before
    assert (Path(node.root) / STATE.lstrip("/") / "current").read_text() == previous + "\n"
    assert not (Path(node.root) / STATE.lstrip("/") / f"releases/{rid}.yaml").exists()
    assert "rolling back" in out


def test_a_failure_halfway_brings_the_old_replicas_back_one_at_a_time(node):
    previous = deployed(node, shop())
    node.broken_slots.add(("web", 2, "ghcr.io/example/shop-web:1.4.3"))
    node.commands.clear()
    code, _, err = run_agent(
        node, "deploy", stdin=release(shop(web_image="ghcr.io/example/shop-web:1.4.3"))[1]
    )
    assert code == 1 and err.strip().endswith(f"rolled back to {previous}")
    assert "(web-2: HTTP 404 from /healthz)" in err
    web = [c for c in node.changes() if "web@" in c]
    assert web == [
        # forward: surge 3, web-1 replaced, web-2's new container never healthy
        "systemctl start --no-block app-web@3.service",
        "systemctl stop app-web@1.service",
        "systemctl start --no-block app-web@1.service",
        "systemctl stop app-web@2.service",
        "systemctl start --no-block app-web@2.service",
        # back: the failed one, old web-2 where nothing serves, then old web-1, then the surge
        "systemctl stop app-web@2.service",
        "systemctl start --no-block app-web@2.service",
        "systemctl stop app-web@1.service",
        "systemctl start --no-block app-web@1.service",
        "systemctl stop app-web@3.service",
    ]
    assert node.active >= {"app-web@1.service", "app-web@2.service"}
    assert "app-web@3.service" not in node.active


def test_a_failure_restores_every_service_already_changed(node):
    previous = deployed(node, shop())
    node.broken.add("ghcr.io/example/shop-web:broken")
    services = shop(web_image="ghcr.io/example/shop-web:broken")
    services[1] = service("redis", "redis:7.4.1-alpine", budget=20)  # before web: rolled out
    node.commands.clear()
    code, _, err = run_agent(node, "deploy", stdin=release(services)[1])
    assert code == 1 and err.strip().endswith(f"rolled back to {previous}")
    redis = [c for c in node.changes() if "redis@" in c]
    # redis 7.4.1 went out (surge), then redis 7.4 came back the same way.
    assert (
        redis
        == [
            "systemctl start --no-block app-redis@2.service",
            "systemctl stop app-redis@1.service",
            "systemctl start --no-block app-redis@1.service",
            "systemctl stop app-redis@2.service",
        ]
        * 2
    )
    assert (
        "image=redis:7.4-alpine"
        in (Path(node.root) / f"{SCRIPTS}/run-redis".lstrip("/")).read_text()
    )


def test_a_failing_first_release_has_nothing_to_roll_back_to(node):
    node.broken.add("ghcr.io/example/shop-web:broken")
    rid, text = release(shop(web_image="ghcr.io/example/shop-web:broken"))
    code, _, err = run_agent(node, "deploy", stdin=text)
    assert code == 1
    assert err.startswith(f"release {rid}: web did not become healthy within 30 s (web-1: ")
    assert "nothing to roll back to" in err
    assert not (Path(node.root) / STATE.lstrip("/") / "current").exists()
    assert not any(u.startswith("app-") and u.endswith(".service") for u in node.active)
    assert not (Path(node.root) / f"{SCRIPTS}/run-web".lstrip("/")).exists()
    assert "blueprints-caddy.service" not in node.active


def test_a_missing_image_fails_before_anything_changes(node):
    previous = deployed(node, shop())
    node.unpullable.add("ghcr.io/example/shop-web:9")
    node.missing.add("ghcr.io/example/shop-web:9")
    before = file_state(Path(node.root))
    node.commands.clear()
    code, _, err = run_agent(
        node, "deploy", stdin=release(shop(web_image="ghcr.io/example/shop-web:9"))[1]
    )
    assert code == 1
    assert "could not be pulled" in err and f"still on release {previous}" in err
    assert node.changes() == []
    assert file_state(Path(node.root)) == before


def test_a_failed_pull_of_an_image_present_here_is_fine(node):
    deployed(node, shop())
    node.unpullable.add("ghcr.io/example/shop-web:1.4.3")
    code, out, _ = run_agent(
        node, "deploy", stdin=release(shop(web_image="ghcr.io/example/shop-web:1.4.3"))[1]
    )
    assert code == 0
    assert "using the copy here" in out


# --- refusals: exit 2, one sentence, nothing changed -------------------------------------------


def _edited(text: str, edit) -> str:
    body = yaml.safe_load(text)
    edit(body)
    return yaml.safe_dump(body)


def _rehashed(text: str, edit) -> str:
    body = yaml.safe_load(text)
    edit(body)
    body["release"] = agent.release_id(body)
    return yaml.safe_dump(body)


def _outside(body):
    body["files"]["/etc/passwd"] = {"mode": "0644", "text": "root::0:0::/:/bin/sh\n"}


def _traversal(body):
    body["files"]["/etc/systemd/system/../../shadow"] = {"mode": "0600", "text": "x\n"}


def _secret_in_release(body):
    body["files"]["/etc/blueprints/secrets/web.env"] = {"mode": "0600", "text": "A=b\n"}


def _secrets_dir_itself(body):
    body["files"]["/etc/blueprints/secrets"] = {"mode": "0644", "text": "x\n"}


def _world_writable(body):
    next(iter(body["files"].values()))["mode"] = "0666"


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda t: "format: something-else/1\n", "not a release document"),
        (lambda t: "{{{ not yaml", "not valid YAML"),
        (lambda t: "", "no release document was given on stdin"),
        (lambda t: _edited(t, lambda b: b["services"][2].update(replicas=9)), "digests to"),
        (lambda t: _rehashed(t, _outside), "'/etc/passwd' is outside the allowed install roots"),
        (lambda t: _rehashed(t, _traversal), "is outside the allowed install roots"),
        (lambda t: _rehashed(t, _secret_in_release), "is outside the allowed install roots"),
        (lambda t: _rehashed(t, _secrets_dir_itself), "is outside the allowed install roots"),
        (lambda t: _rehashed(t, _world_writable), "would be writable by others (mode 0666)"),
        (lambda t: _rehashed(t, lambda b: b.update(secrets="ab" * 8)), "needs secrets document"),
        (lambda t: _rehashed(t, lambda b: b.update(rung="compose")), "no /usr/local/sbin/app-"),
        (lambda t: _rehashed(t, lambda b: b.update(colour="blue")), "unknown field(s) colour"),
    ],
)
def test_refused_input_changes_nothing(node, make, says):
    previous = deployed(node, shop())
    before = file_state(Path(node.root))
    node.commands.clear()
    _, text = release(shop(web_image="ghcr.io/example/shop-web:1.4.3"))
    code, _, err = run_agent(node, "deploy", stdin=make(text))
    assert code == 2
    assert says in err
    assert len(err.strip().splitlines()) == 1 and err.rstrip().endswith(
        tuple("abcdefghijklmnopqrstuvwxyz0123456789)")
    ), err
    assert node.argv_log() == []
    after = file_state(Path(node.root))
    after.pop("run/blueprints-release.lock", None)
    before.pop("run/blueprints-release.lock", None)
    assert after == before
    assert (Path(node.root) / STATE.lstrip("/") / "current").read_text() == previous + "\n"


def test_a_node_without_the_data_volume_refuses(node):
    node.mounted = False
    code, _, err = run_agent(node, "deploy", stdin=release(shop())[1])
    assert code == 2 and "does not hold the data volume" in err
    assert node.argv_log() == []


# --- secrets, state, pruning, activation ----------------------------------------------------------


def test_secrets_are_kept_then_installed_root_only(node):
    digest, text = secrets_doc({"web": "DATABASE_PASSWORD=s3cret\n"})
    code, _, _ = run_agent(node, "secrets", stdin=text)
    assert code == 0
    kept = Path(node.root) / STATE.lstrip("/") / f"secrets/{digest}.yaml"
    assert kept.stat().st_mode & 0o777 == 0o600
    deployed(node, shop(), secrets=digest)
    env = Path(node.root) / "etc/blueprints/secrets/web.env"
    assert env.read_text() == "DATABASE_PASSWORD=s3cret\n"
    assert env.stat().st_mode & 0o777 == 0o600
    assert env.parent.stat().st_mode & 0o777 == 0o700


def test_a_secrets_document_outside_its_root_is_refused(node):
    body = {
        "format": agent.SECRETS_FORMAT,
        "digest": "0" * 16,
        "files": {"/etc/systemd/system/x.service": {"mode": "0600", "text": "x"}},
    }
    code, _, err = run_agent(node, "secrets", stdin=yaml.safe_dump(body))
    assert code == 2 and "outside the allowed install roots (/etc/blueprints/secrets/)" in err
    assert not (Path(node.root) / STATE.lstrip("/")).exists()


def test_files_of_the_previous_release_are_removed(node):
    deployed(node, shop())
    services = [s for s in shop() if s["name"] != "worker"]
    deployed(node, services)
    assert not (Path(node.root) / f"{SCRIPTS}/run-worker".lstrip("/")).exists()
    assert "systemctl stop app-worker@1.service" in node.changes()


def test_the_newest_five_releases_are_kept(node):
    ids = []
    digests = []
    for n in range(7):
        digest, text = secrets_doc({"web": f"KEY={n}\n"})
        run_agent(node, "secrets", stdin=text)
        digests.append(digest)
        ids.append(
            deployed(node, shop(web_image=f"ghcr.io/example/shop-web:1.{n}"), secrets=digest)
        )
    state = Path(node.root) / STATE.lstrip("/")
    assert sorted(p.stem for p in (state / "releases").iterdir()) == sorted(ids[2:])
    assert sorted(p.stem for p in (state / "secrets").iterdir()) == sorted(digests[2:])
    assert (state / "history").read_text().split() == ids
    code, out, _ = run_agent(node, "status")
    assert code == 0
    assert out.startswith(f"current: {ids[-1]} (single-vm, app shop)\n")
    assert re.search(r"web\s+digest [0-9a-f]{16}\s+2 x ghcr.io/example/shop-web:1.6", out)


def test_rollback_deploys_the_previous_release_again(node):
    first = deployed(node, shop())
    deployed(node, shop(web_image="ghcr.io/example/shop-web:1.4.3"))
    code, _, err = run_agent(node, "rollback")
    assert code == 0, err
    assert (Path(node.root) / STATE.lstrip("/") / "current").read_text() == first + "\n"
    assert (
        "image=ghcr.io/example/shop-web:1.4.2"
        in (Path(node.root) / f"{SCRIPTS}/run-web".lstrip("/")).read_text()
    )
    code, _, err = run_agent(node, "rollback", "ffffffffffffffff")
    assert code == 2 and "is not kept on this volume" in err


def test_activate_without_a_release_is_a_no_op(node):
    code, out, _ = run_agent(node, "activate")
    assert code == 0
    assert "no release on the data volume yet" in out
    assert node.argv_log() == []


def test_activate_installs_the_current_release_and_starts_the_app(node, tmp_path):
    digest, text = secrets_doc({"web": "K=v\n"})
    run_agent(node, "secrets", stdin=text)
    rid = deployed(node, shop(), secrets=digest)
    # Another machine takes the volume over: the same /srv/data, a root disk without the app.
    spare = FakeNode(tmp_path / "spare")
    os.rmdir(Path(spare.root) / "srv/data")
    os.symlink(Path(node.root) / "srv/data", Path(spare.root) / "srv/data")
    code, out, _ = run_agent(spare, "activate")
    assert code == 0
    assert f"activating release {rid}" in out
    assert (Path(spare.root) / "etc/blueprints/secrets/web.env").read_text() == "K=v\n"
    assert (Path(spare.root) / f"{SCRIPTS}/run-web".lstrip("/")).exists()
    assert ["systemctl", "daemon-reload"] in spare.argv_log()
    assert spare.argv_log()[-1] == ["systemctl", "start", "app.target"]


def test_caddy_config_is_rewritten_in_place_for_its_bind_mount(node):
    deployed(node, shop())
    caddy = Path(node.root) / "etc/blueprints/caddy.json"
    inode = caddy.stat().st_ino
    deployed(node, shop(web_replicas=3))
    assert caddy.stat().st_ino == inode
    assert "web-4:8000" in caddy.read_text()
    assert ["systemctl", "reload", "blueprints-caddy.service"] in node.argv_log()
    # Other files are replaced atomically (a new inode).
    run_web = Path(node.root) / f"{SCRIPTS}/run-web".lstrip("/")
    inode = run_web.stat().st_ino
    deployed(node, shop(web_image="ghcr.io/example/shop-web:1.4.3", web_replicas=3))
    assert run_web.stat().st_ino != inode


def test_durations_of_caddy():
    assert agent.parse_duration("10s") == 10
    assert agent.parse_duration("1m30s") == 90
    assert agent.parse_duration("500ms") == 0.5
    assert agent.parse_duration("soon") == 0


# --- compose -----------------------------------------------------------------------------------


@pytest.fixture
def cnode(tmp_path):
    return FakeNode(tmp_path / "vm", rung="compose")


def compose_release(services, **kw):
    return release(services, rung="compose", units=["app-autoheal.timer"], **kw)


def test_compose_first_release_then_docker_rollout_style_surge(cnode):
    _, text = compose_release(shop())
    code, out, err = run_agent(cnode, "deploy", stdin=text)
    assert code == 0, out + err
    web = sorted(c["number"] for c in cnode.containers.values() if c["service"] == "web")
    assert web == [1, 2]
    assert "app-compose.service" in cnode.active and "app-autoheal.timer" in cnode.active
    cnode.commands.clear()
    code, out, err = run_agent(
        cnode, "deploy", stdin=compose_release(shop(web_image="ghcr.io/example/shop-web:1.4.3"))[1]
    )
    assert code == 0, out + err
    changes = cnode.changes()
    up = changes.index(f"{agent.WRAPPER} up --detach --no-deps --no-recreate --scale web=4 web")
    stops = [i for i, c in enumerate(changes) if c.startswith("docker stop")]
    assert len(stops) == 2 and up < stops[0]
    # Both new containers were healthy before the first old one stopped, and the proxy's DNS
    # refresh passed between the two stops.
    stop_times = [t for t, a in cnode.commands if a[:2] == ["docker", "stop"]]
    assert stop_times[1] - stop_times[0] >= 1 + agent.SETTLE_MARGIN
    running = {c["number"]: c["image"] for c in cnode.containers.values() if c["service"] == "web"}
    assert running == {3: "ghcr.io/example/shop-web:1.4.3", 4: "ghcr.io/example/shop-web:1.4.3"}
    assert not any("postgres" in c or "redis" in c for c in changes)


def test_compose_unhealthy_release_removes_the_new_containers_only(cnode):
    previous = deployed(cnode, shop(), rung="compose", units=["app-autoheal.timer"])
    old = {cid for cid, c in cnode.containers.items() if c["service"] == "web"}
    cnode.broken.add("ghcr.io/example/shop-web:broken")
    rid, text = compose_release(shop(web_image="ghcr.io/example/shop-web:broken"))
    cnode.commands.clear()
    code, _, err = run_agent(cnode, "deploy", stdin=text)
    assert code == 1
    # One `up` (the new containers beside the old), then only the new ones removed.
    assert [c for c in cnode.changes() if " up " in c] == [
        f"{agent.WRAPPER} up --detach --no-deps --no-recreate --scale web=4 web"
    ]
    assert re.fullmatch(
        rf"release {rid}: web did not become healthy within 30 s \(shop-web-[34]: health check "
        rf"exited 1: HTTP 404\); rolled back to {previous}\n",
        err,
    )
    assert {cid for cid, c in cnode.containers.items() if c["service"] == "web"} == old
    assert all(cnode.containers[cid]["running"] for cid in old)
    compose = yaml.safe_load((Path(cnode.root) / "etc/blueprints/compose/compose.yaml").read_text())
    assert compose["services"]["web"]["image"] == "ghcr.io/example/shop-web:1.4.2"


def test_compose_replica_change_and_proxy_reload(cnode):
    deployed(cnode, shop(), rung="compose", units=["app-autoheal.timer"])
    cnode.commands.clear()
    files = compose_files(shop(web_replicas=3), refresh="2s")
    deployed(cnode, shop(web_replicas=3), rung="compose", files=files, units=["app-autoheal.timer"])
    assert f"{agent.WRAPPER} up --detach --no-deps --no-recreate --scale web=3 web" in (
        cnode.changes()
    )
    assert [
        agent.WRAPPER,
        "exec",
        "-T",
        "blueprints_proxy",
        "caddy",
        "reload",
        "--config",
        "/etc/caddy/caddy.json",
    ] in cnode.argv_log()
    assert not any(c.startswith("docker stop") for c in cnode.changes())


def test_compose_first_release_starts_everything_at_once_and_undoes_it_on_failure(cnode):
    cnode.broken.add("ghcr.io/example/shop-web:broken")
    rid, text = compose_release(shop(web_image="ghcr.io/example/shop-web:broken"))
    code, _, err = run_agent(cnode, "deploy", stdin=text)
    assert code == 1
    assert err.startswith(f"release {rid}: web did not become healthy within 30 s (shop-web-")
    assert "nothing to roll back to" in err
    ups = [c for c in cnode.changes() if " up " in c]
    assert ups[1].endswith(
        "--scale=postgres=1 --scale=redis=1 --scale=web=2 --scale=worker=1 "
        "postgres redis web worker"
    )
    # Nothing of the release is left: no container (proxy included), no file, no current.
    assert cnode.containers == {}
    assert not (Path(cnode.root) / "etc/blueprints/compose/compose.yaml").exists()
    assert not (Path(cnode.root) / STATE.lstrip("/") / "current").exists()


# --- what else can go wrong ----------------------------------------------------------------------


def test_an_unexpected_error_rolls_back_and_exits_3(node, monkeypatch):
    """A full disk halfway through the files: the previous release is put back, one sentence
    says what happened, and the exit status is not the 'rolled back cleanly' one."""
    previous = deployed(node, shop())
    before = (Path(node.root) / f"{SCRIPTS}/run-web".lstrip("/")).read_text()
    real_write = FakeNode.write

    def full_disk(self, path, text, mode, in_place=False):
        if path.endswith("run-web") and "1.4.3" in text:
            raise OSError(28, "No space left on device")
        return real_write(self, path, text, mode, in_place)

    monkeypatch.setattr(FakeNode, "write", full_disk)
    rid, text = release(shop(web_image="ghcr.io/example/shop-web:1.4.3"))
    code, _, err = run_agent(node, "deploy", stdin=text)
    assert code == 3
    assert err.strip() == (
        f"release {rid}: OSError: [Errno 28] No space left on device; rolled back to {previous}"
    )
    assert (Path(node.root) / f"{SCRIPTS}/run-web".lstrip("/")).read_text() == before
    assert (Path(node.root) / STATE.lstrip("/") / "current").read_text() == previous + "\n"


class _HungUp(io.StringIO):
    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")


def test_a_hung_up_session_does_not_stop_a_rollout(node):
    """`pulumi up` cancelled mid-rollout: the progress lines have nowhere to go, the rollout
    finishes all the same."""
    deployed(node, shop())
    rid, text = release(shop(web_image="ghcr.io/example/shop-web:1.4.3"))
    code = agent.main(["deploy"], node=node, stdin=io.StringIO(text), out=_HungUp(), err=_HungUp())
    assert code == 0
    assert (Path(node.root) / STATE.lstrip("/") / "current").read_text() == rid + "\n"


def test_compose_proxy_routes_to_a_container_only_once_it_is_healthy(cnode):
    """Caddy looks the service's name up on the proxy's network alone: a new container joins it
    once healthy, before any old one goes; one that never gets healthy never joins."""
    code, out, err = run_agent(cnode, "deploy", stdin=compose_release(shop())[1])
    assert code == 0, out + err
    joined = [a for a in cnode.argv_log() if a[:3] == ["docker", "network", "connect"]]
    assert [a[3:6] for a in joined] == [["--alias", "web", "shop-proxy"]] * 2
    cnode.commands.clear()
    code, out, err = run_agent(
        cnode, "deploy", stdin=compose_release(shop(web_image="ghcr.io/example/shop-web:1.4.3"))[1]
    )
    assert code == 0, out + err
    steps = [
        a
        for a in cnode.argv_log()
        if a[:3] == ["docker", "network", "connect"] or a[:2] == ["docker", "stop"]
    ]
    # both new containers join before the first old one is stopped
    assert [a[1] for a in steps] == ["network", "network", "stop", "stop"]
    cnode.broken.add("ghcr.io/example/shop-web:broken")
    cnode.commands.clear()
    code, _, _ = run_agent(
        cnode, "deploy", stdin=compose_release(shop(web_image="ghcr.io/example/shop-web:broken"))[1]
    )
    assert code == 1
    assert not [a for a in cnode.argv_log() if a[:3] == ["docker", "network", "connect"]]


def test_a_rolled_service_health_timer_is_paused_meanwhile(node):
    """The release's probe must not judge (and restart) a replica of the previous version."""
    deployed(node, shop())
    node.active.add("app-web-health.timer")
    node.commands.clear()
    deployed(node, shop(web_image="ghcr.io/example/shop-web:1.4.3"))
    steps = [c for c in node.changes() if "web" in c]
    assert steps[0] == "systemctl stop app-web-health.timer"
    assert steps[-1] == "systemctl start app-web-health.timer"
    assert "app-web-health.timer" in node.active


# --- tasks (once per release, before the rollout) ------------------------------------------------


def task(name, timeout=60, needs=None):
    out = {"name": name, "argv": [f"{SCRIPTS}/task-{name}"], "timeout": timeout}
    if needs is not None:
        out["needs"] = needs
    return out


def _replacing(argv) -> bool:
    """A command that starts or stops a container of the app."""
    return argv[0] == "systemctl" and argv[1] in ("start", "stop") and "@" in argv[-1]


def test_a_task_runs_after_the_pull_and_install_and_before_any_container_is_replaced(node):
    deployed(node, shop())
    node.commands.clear()
    code, out, err = run_agent(
        node,
        "deploy",
        stdin=release(shop(web_image="ghcr.io/example/shop-web:1.4.3"), tasks=[task("migrate")])[1],
    )
    assert code == 0, out + err
    log = node.argv_log()
    at = log.index([f"{SCRIPTS}/task-migrate"])
    assert log.index(["docker", "pull", "--quiet", "ghcr.io/example/shop-web:1.4.3"]) < at
    assert not any(_replacing(a) for a in log[:at])
    assert any(_replacing(a) for a in log[at:])
    assert "task migrate: running (at most 60 s)" in out and "task migrate: done in" in out


def _failed_task(node, result, timeout=60):
    previous = deployed(node, shop())
    before = file_state(Path(node.root))
    node.task_results["migrate"] = result
    node.commands.clear()
    rid, text = release(
        shop(web_image="ghcr.io/example/shop-web:1.4.3"),
        tasks=[task("migrate", timeout), task("seed")],
    )
    code, out, err = run_agent(node, "deploy", stdin=text)
    assert code == 1
    assert (Path(node.root) / STATE.lstrip("/") / "current").read_text() == previous + "\n"
    assert not (Path(node.root) / STATE.lstrip("/") / f"releases/{rid}.yaml").exists()
    # Nothing was replaced, the next task never ran, and the previous files are back.
    assert not any(_replacing(a) for a in node.argv_log())
    assert [f"{SCRIPTS}/task-seed"] not in node.argv_log()
    after = file_state(Path(node.root))
    assert {p: v for p, v in after.items() if "/.blueprints/" not in p} == {
        p: v for p, v in before.items() if "/.blueprints/" not in p
    }
    assert node.active >= {"app-web@1.service", "app-web@2.service", "app-postgres@1.service"}
    return rid, previous, out, err


def test_a_failing_task_fails_the_release_and_the_previous_one_keeps_serving(node):
    output = "".join(f"line {i}\n" for i in range(30)) + "django.db.utils.OperationalError: boom\n"
    rid, previous, out, err = _failed_task(node, agent.Result(1, output))
    assert err.strip() == (
        f"release {rid}: task migrate failed with exit status 1: django.db.utils."
        f"OperationalError: boom; rolled back to {previous}, which kept serving: no container "
        "was replaced"
    )
    # The task's last output lines, not all of them.
    assert "task migrate | django.db.utils.OperationalError: boom" in out
    assert "task migrate | line 29" in out and "task migrate | line 5\n" not in out


def test_a_task_running_out_of_time_fails_the_release_likewise(node):
    rid, previous, _, err = _failed_task(
        node, agent.Result(124, "", "no answer within 90 s"), timeout=60
    )
    assert err.strip().startswith(f"release {rid}: task migrate did not finish within 60 s;")
    assert f"rolled back to {previous}" in err
    tasks = [c for c in node.commands if c[1] == [f"{SCRIPTS}/task-migrate"]]
    assert len(tasks) == 1


def test_tasks_run_in_the_document_order(node):
    deployed(node, shop())
    node.commands.clear()
    order = [task("zeta"), task("alpha"), task("migrate")]
    deployed(node, shop(web_image="ghcr.io/example/shop-web:1.4.3"), tasks=order)
    ran = [a[0] for a in node.argv_log() if a[0].startswith(f"{SCRIPTS}/task-")]
    assert ran == [f"{SCRIPTS}/task-zeta", f"{SCRIPTS}/task-alpha", f"{SCRIPTS}/task-migrate"]


def test_tasks_do_not_run_again_for_the_current_release(node):
    deployed(node, shop(), tasks=[task("migrate")])
    node.commands.clear()
    deployed(node, shop(), tasks=[task("migrate")])
    assert [f"{SCRIPTS}/task-migrate"] not in node.argv_log()


def test_a_rollback_does_not_run_the_older_release_tasks_again(node):
    """They ran when that release was deployed; an older migration over a newer database could
    fail the rollback that is needed."""
    deployed(node, shop(), tasks=[task("migrate")])
    deployed(node, shop(web_image="ghcr.io/example/shop-web:1.4.3"), tasks=[task("migrate")])
    node.commands.clear()
    code, out, err = run_agent(node, "rollback")
    assert code == 0, err
    assert [f"{SCRIPTS}/task-migrate"] not in node.argv_log()
    assert "tasks: not run again for a rollback" in out


def test_a_release_without_tasks_has_none_to_run(node):
    _, text = release(shop())
    assert "tasks" not in yaml.safe_load(text)
    deployed(node, shop())
    deployed(node, shop(web_image="ghcr.io/example/shop-web:1.4.3"), tasks=[])
    assert not [a for a in node.argv_log() if "task-" in a[0]]


def test_a_first_release_starts_what_its_tasks_need_before_them(node):
    deployed(node, shop(), tasks=[task("migrate", needs=["postgres"])])
    log = node.argv_log()
    at = log.index([f"{SCRIPTS}/task-migrate"])
    assert ["systemctl", "start", "--no-block", "app-postgres@1.service"] in log[:at]
    assert ["systemctl", "start", "--no-block", "app-web@1.service"] in log[at:]
    assert not [a for a in log[:at] if _replacing(a) and "postgres" not in a[-1]]


def test_a_failing_first_release_stops_what_it_started_for_its_tasks(node):
    node.task_results["migrate"] = agent.Result(2, "no such table\n")
    _, text = release(shop(), tasks=[task("migrate", needs=["postgres"])])
    code, _, err = run_agent(node, "deploy", stdin=text)
    assert code == 1 and "nothing to roll back to" in err
    assert not any(u.startswith("app-") and u.endswith(".service") for u in node.active)


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "Bad_Name", "argv": ["/x"], "timeout": 1},
        {"name": "ok", "argv": ["relative"], "timeout": 1},
        {"name": "ok", "argv": [], "timeout": 1},
        {"name": "ok", "argv": ["/x"], "timeout": 0},
        {"name": "ok", "argv": ["/x"], "timeout": 1, "needs": ["nope"]},
        {"name": "ok", "argv": ["/x"], "timeout": 1, "extra": 1},
    ],
)
def test_a_malformed_task_is_refused(node, bad):
    _, text = release(shop(), tasks=[bad])
    code, _, err = run_agent(node, "deploy", stdin=text)
    assert code == 2 and "task" in err
    assert node.changes() == []


# --- registry credentials ------------------------------------------------------------------------

DOCKER_CONFIG_FILE = "/etc/blueprints/secrets/docker/config.json"


def _docker_secrets(auth: str) -> tuple[str, str]:
    files = {DOCKER_CONFIG_FILE: {"mode": "0600", "text": f'{{"auths": {{"x": "{auth}"}}}}\n'}}
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    body = {"format": agent.SECRETS_FORMAT, "digest": digest, "files": files}
    return digest, yaml.safe_dump(body, sort_keys=True)


def test_pulls_and_tasks_read_the_registry_credentials_of_the_release(node):
    digest, text = _docker_secrets("one")
    assert run_agent(node, "secrets", stdin=text)[0] == 0
    deployed(node, shop(), secrets=digest, tasks=[task("migrate")])
    # Even on the first release, its credentials are in place before the first pull.
    for argv, env in zip(node.argv_log(), node.envs, strict=True):
        if argv[:2] == ["docker", "pull"] or "task-" in argv[0]:
            assert env.get("DOCKER_CONFIG") == "/etc/blueprints/secrets/docker", argv
    assert (Path(node.root) / DOCKER_CONFIG_FILE.lstrip("/")).stat().st_mode & 0o777 == 0o600


def test_a_failed_pull_puts_the_previous_credentials_back(node):
    digest, text = _docker_secrets("one")
    run_agent(node, "secrets", stdin=text)
    deployed(node, shop(), secrets=digest)
    digest2, text2 = _docker_secrets("two")
    run_agent(node, "secrets", stdin=text2)
    node.unpullable.add("ghcr.io/example/shop-web:9")
    node.missing.add("ghcr.io/example/shop-web:9")
    _, release_text = release(shop(web_image="ghcr.io/example/shop-web:9"), secrets=digest2)
    code, _, _ = run_agent(node, "deploy", stdin=release_text)
    assert code == 1
    assert '"one"' in (Path(node.root) / DOCKER_CONFIG_FILE.lstrip("/")).read_text()


def test_a_removed_timer_is_stopped_and_its_files_go(node):
    timer = f"{UNITS}/app-schedule-report.timer"
    service_unit = f"{UNITS}/app-schedule-report.service"
    files = single_vm_files(shop())
    files[timer] = {"mode": "0644", "text": "[Timer]\nOnCalendar=daily\n"}
    files[service_unit] = {"mode": "0644", "text": "[Service]\nType=oneshot\n"}
    deployed(node, shop(), files=files, units=["app-schedule-report.timer"])
    assert "app-schedule-report.timer" in node.active
    deployed(node, shop())
    assert "app-schedule-report.timer" not in node.active
    assert ["systemctl", "stop", "app-schedule-report.service"] in node.argv_log()
    assert not (Path(node.root) / timer.lstrip("/")).exists()
