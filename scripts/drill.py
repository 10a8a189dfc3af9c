#!/usr/bin/env python3
"""Failover model: time from the primary's death to the app serving from the spare, step by step.

Prints the single-VM recovery model (`single_vm_recovery` in
blueprints/rungs/single_vm/failure.py) for one stack as a timeline, for a warm and for a cold
spare: the figure `blueprints compare` prints, from the same parameters: the stack's watchdog
settings (blueprints:watchInterval, watchFailures, probeTimeout) and spare mode, the app spec's
health check, and the cloud's operation times (CLOUD_TIMES, estimates, not measurements).
Replace an operation time with --time NAME=SECONDS (for example with one measured on a real
cloud) to see what it changes. The real-node drill
measures the whole failover and passes its own measured operation times to the same model.

Usage: .venv/bin/python scripts/drill.py [--stack single-vm-hcloud] [--spare warm|cold]
       [--time boot=30] [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from blueprints.compare import CompareError, stack_settings
from blueprints.failure import (
    OPERATIONS,
    SPARE_MODES,
    Scenario,
    cloud_times,
    seconds_text,
)
from blueprints.rungs.single_vm.failure import single_vm_recovery
from blueprints.spec import SpecError, load_spec

ROOT = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 60.0


def timeline(scenario: Scenario) -> list[str]:
    """One line per step: when it ends, counted from the primary's death, and what it is."""
    lines, at = [], 0.0
    for step in scenario.steps:
        at += step.seconds
        lines.append(f"    t={round(at, 1):6.1f}s  +{seconds_text(step.seconds):>7}  {step.what}")
    return lines


def parse_times(items: list[str]) -> dict[str, float]:
    """NAME=SECONDS pairs; ValueError with one sentence when one is not."""
    times: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if name not in OPERATIONS:
            raise ValueError(f"--time: unknown operation {name!r}; known: {', '.join(OPERATIONS)}")
        try:
            seconds = float(value) if sep else -1.0
        except ValueError:
            seconds = -1.0
        if not seconds >= 0:
            raise ValueError(f"--time: {item!r} is not NAME=SECONDS with SECONDS >= 0")
        times[name] = seconds
    return times


def main(argv: list[str] | None = None, root: Path = ROOT) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        epilog="operations: "
        + "; ".join(f"{name}: {what}" for name, what in OPERATIONS.items() if name != "container"),
    )
    parser.add_argument("--stack", default="single-vm-hcloud")
    parser.add_argument("--spare", choices=SPARE_MODES, help="one mode only (default: both)")
    parser.add_argument("--time", action="append", default=[], metavar="NAME=SECONDS")
    parser.add_argument(
        "--check", action="store_true", help=f"exit 1 when over {TARGET_SECONDS:.0f} s"
    )
    args = parser.parse_args(argv)
    try:
        times = parse_times(args.time)
        settings = stack_settings(root, args.stack)
        if settings.blueprint != "single-vm":
            raise ValueError(f"{args.stack} is a {settings.blueprint} stack, not single-vm")
        app = load_spec(root / settings.spec)
    except (ValueError, CompareError, SpecError) as exc:
        parser.error(str(exc).splitlines()[0])
    used = cloud_times(settings.cloud, times)
    print(
        f"stack {args.stack} ({settings.cloud}): probe every {settings.watch_interval}s, "
        f"promote after {settings.watch_failures} failures, probe timeout "
        f"{settings.probe_timeout}s; the stack runs a {settings.spare} spare"
    )
    print(
        "cloud operation times (estimates unless given with --time): "
        + ", ".join(
            f"{k} {v:g}s" + (" (given)" if k in times else "")
            for k, v in used.items()
            if k != "container"  # the nomad and k8s models' only
        )
    )
    over = False
    for mode in (args.spare,) if args.spare else SPARE_MODES:
        scenario = single_vm_recovery(settings.model_copy(update={"spare_mode": mode}), app, times)
        seconds = scenario.seconds or 0
        verdict = "under" if seconds < TARGET_SECONDS else "over"
        over = over or verdict == "over"
        print(f"  {mode} spare:")
        print("\n".join(timeline(scenario)))
        print(
            f"    death to serving from the spare: {seconds_text(seconds)} "
            f"({verdict} the {TARGET_SECONDS:.0f} s target)"
        )
    return 1 if (args.check and over) else 0


if __name__ == "__main__":
    sys.exit(main())
