#!/usr/bin/env python3
"""Benchmark: wall time, CPU time and peak memory of offline planning.

Measures, each in a fresh process (so imports count, as they do for a user) and as the median
of --runs runs (default 5):
  * the import floor, `python -c "import pulumi, pulumi_hcloud, pulumi_aws"`: what any plan pays
    before it does anything; every median below is also printed as a multiple of it, measured
    in the same run, so figures from a busy and an idle machine can be compared;
  * `blueprints plan --all` on the example's eight stacks (issue 23: CPU time under 2x the
    floor's, wall under 1.5 s) and on the two single-VM stacks alone (issue 2: under 1 s);
  * `blueprints compare` on hcloud and on localstack (under 2 s each), and with an HTML chart;
  * `blueprints diff --base HEAD` (under 5 s);
  * generated specs (scripts' generated_spec: public web services, workers, a volume for every
    tenth service) with 500 and 2,000 services, in a project with every blueprint on both
    targets: `compare` per target at 500 services (under 10 s), and `plan STACK` of every stack
    at both sizes: linear (the 2,000 run under 4.5x the 500 run) and under 500 MB;
  * `render single-vm-hcloud` at 500 services (issue 2: under 10 s and 500 MB).

CPU time is user + system of the process and of every process it waited for (`plan --all` plans
in one worker process per core). This script prints figures and whether each target is met; it
is not a test and never fails the build by itself (exit 0), unless --check is given.

With --base REF, `plan --all` of the project as it was at git REF (its own blueprints package)
and as it is now are measured in the same run, in interleaved pairs so both see the same load,
and the growth of the ratio to the floor is printed (issue 15: at most +20%).

Usage: .venv/bin/python scripts/benchmark.py [--check] [--runs 5] [--sizes 500,2000]
                                             [--base REF]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import yaml

ROOT = Path(__file__).resolve().parent.parent
RUNS = 5  # per median
PAIRS = 9  # --base: interleaved runs of the old and the new tree
BP = [sys.executable, "-m", "blueprints.cli"]


class Run(NamedTuple):
    wall: float  # seconds
    cpu: float  # user + system seconds, the process and the children it waited for
    rss: float  # peak MiB (of the process or its largest child)
    rc: int


def measure(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> Run:
    """One child process, timed."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    err = proc.stderr.read().decode() if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        print(f"  command failed ({proc.returncode}): {' '.join(cmd)}\n{err}", file=sys.stderr)
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, proc.returncode)


def median(cmd: list[str], cwd: Path, runs: int, env: dict[str, str] | None = None) -> Summary:
    return Summary([measure(cmd, cwd, env) for _ in range(runs)])


class Summary:
    """Several runs of one command: medians of wall and CPU time, the largest peak memory."""

    def __init__(self, runs: list[Run]):
        self.runs = runs
        self.wall = statistics.median(r.wall for r in runs)
        self.cpu = statistics.median(r.cpu for r in runs)
        self.rss = max(r.rss for r in runs)
        self.ok = all(r.rc == 0 for r in runs)

    def walls(self) -> str:
        return ", ".join(f"{r.wall:.2f}" for r in self.runs)


def generated_spec(n: int) -> dict:
    """A spec with n services in the mix a real app has: public web services, workers, and a
    stateful service with a volume for every tenth."""
    services: dict[str, dict] = {}
    volumes: dict[str, dict] = {}
    for i in range(n):
        name = f"svc-{i:03d}"
        svc: dict = {
            "image": f"ghcr.io/example/{name}:1.0.{i}",
            "env": {f"SETTING_{k}": f"value-{i}-{k}" for k in range(3)},
            "memory": "128Mi",
            "cpu": 0.1,
        }
        # Every service its own port: on nomad a port is a static host port, one per node.
        if i % 10 == 0:
            volumes[f"data-{i:03d}"] = {"size_gb": 1}
            svc["volumes"] = [{"volume": f"data-{i:03d}", "path": "/data"}]
            svc["ports"] = [{"port": 10000 + i}]
            svc["health"] = {"type": "tcp", "interval": "10s", "timeout": "2s"}
        elif i % 3 == 0:
            svc["ports"] = [{"port": 10000 + i, "expose": "http", "path": f"/{name}"}]
            svc["replicas"] = 2
            svc["health"] = {"type": "http", "path": "/healthz"}
            svc["secret_env"] = ["API_TOKEN"]
        else:
            svc["command"] = ["worker", "--queue", name]
            if i > 0:
                svc["depends_on"] = [f"svc-{(i // 10) * 10:03d}"]
        services[name] = svc
    return {
        "name": "bench",
        "domain": "bench.example.com",
        "acme_email": "ops@example.com",
        "services": services,
        "volumes": volumes,
        "admin": {"cidrs": ["203.0.113.0/24"]},
    }


BLUEPRINTS = ("single-vm", "compose", "nomad", "k8s")
TARGETS = ("hcloud", "localstack")


def bench_project(base: Path, n: int) -> Path:
    """A project planning the n-service spec with every blueprint on both targets."""
    project = base / f"project-{n}"
    (project / "stacks").mkdir(parents=True)
    (project / "blueprints").mkdir()
    (project / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
    (project / "blueprints/program.py").write_text((ROOT / "blueprints/program.py").read_text())
    (project / "app.yaml").write_text(yaml.safe_dump(generated_spec(n), sort_keys=True))
    for blueprint in BLUEPRINTS:
        for target in TARGETS:
            config = {
                "blueprints:blueprint": blueprint,
                "blueprints:target": target,
                "blueprints:spec": "app.yaml",
                # It measures planning, not fit: hundreds of services on one small server.
                "blueprints:overcommit": True,
            }
            if target == "localstack":
                config["blueprints:region"] = "eu-central-1"
                config["blueprints:zone"] = "eu-central-1a"
            (project / f"stacks/Pulumi.{blueprint}-{target}.yaml").write_text(
                yaml.safe_dump({"config": config})
            )
    return project


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--runs", type=int, default=RUNS, help=f"runs per median ({RUNS})")
    parser.add_argument(
        "--sizes",
        default="500,2000",
        help="service counts of the generated specs (default 500,2000; compare runs at the "
        "first, the linear check compares the last with the first)",
    )
    parser.add_argument(
        "--base", metavar="REF", help="also plan every stack as of git REF, for the ratio's growth"
    )
    args = parser.parse_args()
    if args.runs < 1:
        print("--runs: at least 1", file=sys.stderr)
        return 2
    if args.base is not None:
        known = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"{args.base}^{{commit}}"],
            cwd=ROOT,
            capture_output=True,
            check=False,
        )
        if known.returncode != 0:
            print(f"--base: {args.base!r} is not a commit of this repository", file=sys.stderr)
            return 2
    try:
        sizes = sorted({int(x) for x in args.sizes.split(",") if x})
    except ValueError:
        print("--sizes: a comma-separated list of service counts", file=sys.stderr)
        return 2
    runs = args.runs
    missed: list[str] = []

    def show(label: str, m: Summary, target: str = "", floor_: Summary | None = None) -> None:
        ratio = f"{m.wall / floor_.wall:.1f}x floor " if floor_ else ""
        print(
            f"{label:44} {m.wall:7.2f} {m.cpu:7.2f} {m.rss:8.0f}  {target}{ratio}"
            f"(runs {m.walls()})",
            flush=True,
        )

    def verdict(label: str, ok: bool) -> str:
        if not ok:
            missed.append(label)
        return f"{ok} "

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, {runs} runs per median")
    print(f"{'what':44} {'wall s':>7} {'cpu s':>7} {'peak MiB':>8}  target")
    with tempfile.TemporaryDirectory(prefix="blueprints-bench-") as tmp:
        floor_cmd = [sys.executable, "-c", "import pulumi, pulumi_hcloud, pulumi_aws"]
        floor = median(floor_cmd, ROOT, runs)
        show("import floor (pulumi, hcloud, aws)", floor)

        every = median([*BP, "plan", "--all", "--project", str(ROOT)], ROOT, runs)
        ok_cpu = every.ok and every.cpu < 2 * floor.cpu
        ok_wall = every.ok and every.wall < 1.5
        show(
            "plan --all (8 stacks)",
            every,
            f"cpu {every.cpu / floor.cpu:.1f}x the floor's < 2x: "
            f"{verdict('plan --all cpu', ok_cpu)}< 1.5 s: {verdict('plan --all wall', ok_wall)}",
            floor,
        )
        # Issue 2: a copy of the project holding only the two single-VM stacks.
        single = Path(tmp) / "single-vm-only"
        (single / "stacks").mkdir(parents=True)
        project_file = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
        project_file["main"] = "program.py"
        (single / "Pulumi.yaml").write_text(yaml.safe_dump(project_file))
        shutil.copy(ROOT / "blueprints" / "program.py", single / "program.py")
        shutil.copytree(ROOT / "examples", single / "examples")
        for stack in sorted((ROOT / "stacks").glob("Pulumi.single-vm-*.yaml")):
            shutil.copy(stack, single / "stacks")
        pair = median([*BP, "plan", "--all", "--project", str(single)], single, runs)
        ok = pair.ok and pair.wall < 1.0
        show("plan --all (the 2 single-vm stacks)", pair, f"< 1 s: {verdict('pair', ok)}", floor)

        for label, verb, limit in (
            ("compare (hcloud)", ["compare"], 2.0),
            ("compare (localstack)", ["compare", "-t", "localstack"], 2.0),
            ("compare -f html --chart", ["compare", "-f", "html", "--chart", f"{tmp}/c.svg"], None),
            ("diff --base HEAD", ["diff", "--base", "HEAD"], 5.0),
        ):
            m = median([*BP, *verb, "--project", str(ROOT)], ROOT, runs)
            target = ""
            if limit is not None:
                target = f"< {limit:g} s: {verdict(label, m.ok and m.wall < limit)}"
            show(label, m, target, floor)

        if args.base is not None:
            base = Path(tmp) / "base"
            base.mkdir()
            archive = subprocess.run(
                ["git", "archive", "--format=tar", args.base], cwd=ROOT, capture_output=True
            )
            subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True)
            env = {**os.environ, "PYTHONPATH": str(base)}
            # Interleaved pairs, so that both sides see the same machine load.
            then_cmd = [*BP, "plan", "--all", "--project", str(base)]
            now_cmd = [*BP, "plan", "--all", "--project", str(ROOT)]
            then_runs, now_runs = [], []
            for _ in range(PAIRS):
                then_runs.append(measure(then_cmd, base, env))
                now_runs.append(measure(now_cmd, ROOT))
            then, now = Summary(then_runs), Summary(now_runs)
            growth = now.wall / then.wall - 1
            show(f"plan --all at {args.base}", then, "", floor)
            show("plan --all now", now, "", floor)
            ok = then.ok and now.ok and growth <= 0.20
            print(f"{'growth of the ratio to the floor':44} {growth:+7.0%}  <= +20%: {ok}")
            if not ok:
                missed.append("plan --all ratio growth")

        projects = {n: bench_project(Path(tmp), n) for n in sizes}
        small, large = sizes[0], sizes[-1]
        for target in TARGETS:
            label = f"compare ({target}), {small} services"
            cmd = [*BP, "compare", "-t", target, "--project", str(projects[small])]
            m = median(cmd, ROOT, runs)
            show(label, m, f"< 10 s: {verdict(label, m.ok and m.wall < 10)}")
        for target in TARGETS:
            for blueprint in BLUEPRINTS:
                stack = f"{blueprint}-{target}"
                by_size = {}
                for n in sizes:
                    cmd = [*BP, "plan", stack, "--project", str(projects[n])]
                    by_size[n] = m = median(cmd, ROOT, runs)
                    label = f"plan {stack}, {n} services"
                    show(label, m, f"< 500 MiB: {verdict(label, m.ok and m.rss < 500)}")
                if large != small:
                    ratio = by_size[large].wall / by_size[small].wall
                    # Linear: 4.5x for 2,000 services against 500 (4x the work, an eighth spare).
                    limit = 1.125 * large / small
                    label = f"  {stack}: {large} against {small}"
                    print(
                        f"{label:44} {ratio:6.2f}x {'':16}  < {limit:g}x (linear): "
                        f"{verdict(label.strip(), ratio < limit)}",
                        flush=True,
                    )
        cmd = [*BP, "render", "single-vm-hcloud", "--project", str(projects[small])]
        m = median([*cmd, "-o", f"{tmp}/out"], ROOT, 1)
        label = f"render single-vm-hcloud, {small} services (1 run)"
        show(label, m, f"< 10 s, 500 MiB: {verdict(label, m.ok and m.wall < 10 and m.rss < 500)}")

    if missed:
        print("missed: " + ", ".join(missed))
    else:
        print("every target met")
    return 1 if (missed and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
