#!/usr/bin/env python3
"""Benchmark: wall time and peak memory of offline planning.

Measures, each in a fresh process (so imports count, as they do for a user):
  * the import floor, `python -c "import pulumi, pulumi_hcloud, pulumi_aws"`: what any plan pays
    before it does anything; every median below is also printed as a multiple of it, measured
    in the same run, so figures from a busy and an idle machine can be compared;
  * `blueprints plan --all` on the two single-VM stacks (the target) and on every stack;
  * `blueprints compare` of the four blueprints on one target (issue 7: under 2 s);
  * `blueprints plan single-vm-hcloud` and `render` for generated specs with 10/100/500 services;
  * `blueprints plan nomad-hcloud` for generated specs with 500 and 2,000 services.

Targets (issue 2): both single-VM stacks planned in under 1 s together; 500 services under
10 s and 500 MB. This script prints figures and whether each target is met; it is not a test
and never fails the build by itself (exit 0), unless --check is given.

With --base REF, `plan --all` of the project as it was at git REF (its own blueprints package)
and as it is now are measured in the same run, in interleaved pairs so both see the same load,
and the growth of the ratio to the floor is printed (issue 15: at most +20%).

Nomad at scale (issue 16): the plan of 2,000 services takes under 4x the time of 500 (it grows
linearly: one job per service, each holding what that service reaches) and under 500 MB.

Usage: .venv/bin/python scripts/benchmark.py [--check] [--sizes 10,100,500] [--base REF]
                                             [--nomad-sizes 500,2000]
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

import yaml

ROOT = Path(__file__).resolve().parent.parent
RUNS = 5  # per median
PAIRS = 9  # --base: interleaved runs of the old and the new tree
BP = [sys.executable, "-m", "blueprints.cli"]


def measure(
    cmd: list[str], cwd: Path, env: dict[str, str] | None = None
) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MiB, exit code) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        print(f"  command failed ({proc.returncode}): {' '.join(cmd)}\n{err}", file=sys.stderr)
    return wall, usage.ru_maxrss / 1024, proc.returncode


def _runs(runs: list[tuple[float, float, int]]) -> str:
    return ", ".join(f"{r[0]:.2f}" for r in runs)


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


def bench_project(base: Path, n: int) -> Path:
    project = base / f"project-{n}"
    (project / "stacks").mkdir(parents=True)
    (project / "blueprints").mkdir()
    (project / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
    (project / "blueprints/program.py").write_text((ROOT / "blueprints/program.py").read_text())
    (project / "app.yaml").write_text(yaml.safe_dump(generated_spec(n), sort_keys=True))
    for blueprint in ("single-vm", "nomad"):
        (project / f"stacks/Pulumi.{blueprint}-hcloud.yaml").write_text(
            yaml.safe_dump(
                {
                    "config": {
                        "blueprints:blueprint": blueprint,
                        "blueprints:target": "hcloud",
                        "blueprints:spec": "app.yaml",
                        # It measures planning, not fit: hundreds of services on one cx23.
                        "blueprints:overcommit": True,
                    }
                }
            )
        )
    return project


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--sizes", default="10,100,500", help="service counts (default 10,100,500)")
    parser.add_argument(
        "--base", metavar="REF", help="also plan every stack as of git REF, for the ratio's growth"
    )
    parser.add_argument(
        "--nomad-sizes",
        default="500,2000",
        help="service counts of the nomad plan at scale (default 500,2000; the last is compared "
        "with the first)",
    )
    args = parser.parse_args()
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
        sizes = [int(s) for s in args.sizes.split(",")]
        nomad_sizes = [int(s) for s in args.nomad_sizes.split(",") if s]
    except ValueError:
        print("--sizes, --nomad-sizes: a comma-separated list of service counts", file=sys.stderr)
        return 2
    missed: list[str] = []

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores")
    print(f"{'what':46} {'wall s':>8} {'peak MiB':>9}  target")
    with tempfile.TemporaryDirectory(prefix="blueprints-bench-") as tmp:
        # The target is for the two single-VM stacks: a copy of the project holding only them.
        single = Path(tmp) / "single-vm-only"
        (single / "stacks").mkdir(parents=True)
        project_file = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
        project_file["main"] = "program.py"
        (single / "Pulumi.yaml").write_text(yaml.safe_dump(project_file))
        shutil.copy(ROOT / "blueprints" / "program.py", single / "program.py")
        shutil.copytree(ROOT / "examples", single / "examples")
        for stack in sorted((ROOT / "stacks").glob("Pulumi.single-vm-*.yaml")):
            shutil.copy(stack, single / "stacks")
        floor_cmd = [sys.executable, "-c", "import pulumi, pulumi_hcloud, pulumi_aws"]
        floor_runs = [measure(floor_cmd, ROOT) for _ in range(RUNS)]
        floor = statistics.median(r[0] for r in floor_runs)
        print(
            f"{'import floor (pulumi, hcloud, aws), median':46} {floor:8.2f} "
            f"{max(r[1] for r in floor_runs):9.0f}  (runs {_runs(floor_runs)})"
        )
        for label, cwd, limit, verb in (
            ("plan --all (both single-vm stacks), median", single, 1.0, ["plan", "--all"]),
            ("plan --all (every stack), median", ROOT, None, ["plan", "--all"]),
            ("compare (4 blueprints, hcloud), median", ROOT, 2.0, ["compare"]),
            (
                "compare (4 blueprints, localstack), median",
                ROOT,
                2.0,
                ["compare", "-t", "localstack"],
            ),
            (
                "compare -f html --chart .svg, median",
                ROOT,
                None,
                ["compare", "-f", "html", "--chart", str(Path(tmp) / "c.svg")],
            ),
        ):
            # Several runs: the first after a change pays for cold file caches; the median.
            cmd = [*BP, *verb, "--project", str(cwd)]
            runs = [measure(cmd, cwd) for _ in range(RUNS)]
            wall = statistics.median(r[0] for r in runs)
            rss = max(r[1] for r in runs)
            ok = all(r[2] == 0 for r in runs) and (limit is None or wall < limit)
            target = f"< {limit:g} s: {ok} " if limit is not None else ""
            print(
                f"{label:46} {wall:8.2f} {rss:9.0f}  {target}{wall / floor:.1f}x floor "
                f"(runs {_runs(runs)})"
            )
            if not ok:
                missed.append(label)

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
            before = statistics.median(r[0] for r in then_runs)
            after = statistics.median(r[0] for r in now_runs)
            growth = after / before - 1
            ok = all(r[2] == 0 for r in [*then_runs, *now_runs]) and growth <= 0.20
            for label, wall, runs in (
                (f"plan --all (every stack) at {args.base}, median", before, then_runs),
                ("plan --all (every stack) now, median", after, now_runs),
            ):
                print(
                    f"{label:46} {wall:8.2f} {max(r[1] for r in runs):9.0f}  "
                    f"{wall / floor:.1f}x floor (runs {_runs(runs)})"
                )
            print(f"{'growth of the ratio to the floor':46} {growth:+8.0%} {'':9}  <= +20%: {ok}")
            if not ok:
                missed.append("plan --all ratio growth")

        for n in sizes:
            project = bench_project(Path(tmp), n)
            for verb in ("plan", "render"):
                cmd = [*BP, verb, "single-vm-hcloud", "--project", str(project)]
                if verb == "render":
                    cmd += ["-o", str(project / "out")]
                wall, rss, rc = measure(cmd, project)
                target = ""
                if n == 500:
                    ok = rc == 0 and wall < 10 and rss < 500
                    target = f"< 10 s and < 500 MiB: {ok}"
                    if not ok:
                        missed.append(f"{verb} {n}")
                print(f"{f'{verb} single-vm, {n} services':46} {wall:8.2f} {rss:9.0f}  {target}")

        nomad_runs: dict[int, tuple[float, float, int]] = {}
        for n in nomad_sizes:
            project = bench_project(Path(tmp), n) if n not in sizes else Path(tmp) / f"project-{n}"
            cmd = [*BP, "plan", "nomad-hcloud", "--project", str(project)]
            nomad_runs[n] = wall, rss, rc = measure(cmd, project)
            ok = rc == 0 and rss < 500
            print(f"{f'plan nomad, {n} services':46} {wall:8.2f} {rss:9.0f}  < 500 MiB: {ok}")
            if not ok:
                missed.append(f"plan nomad {n}")
        if len(nomad_runs) >= 2:
            (small, (t_small, _, _)), (large, (t_large, _, _)) = (
                min(nomad_runs.items()),
                max(nomad_runs.items()),
            )
            ratio = t_large / t_small
            # Linear: the time beyond the import floor grows with the services; allow 4x for a
            # 4x larger app (the floor itself does not grow).
            limit = large / small
            ok = ratio < limit
            print(
                f"{f'nomad {large} vs {small} services':46} {ratio:7.2f}x {'':9}  "
                f"< {limit:g}x (linear): {ok}"
            )
            if not ok:
                missed.append("nomad plan growth")

    if missed:
        print("missed: " + ", ".join(missed))
    return 1 if (missed and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
