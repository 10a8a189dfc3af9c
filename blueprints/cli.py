"""The `blueprints` command: plan stacks offline, render what the VMs run, validate a spec."""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from blueprints.spec import SpecError, load_spec

EXIT_BAD_INPUT = 2

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    rich_markup_mode="rich",
    help="One app spec, four deployment blueprints. Plan and render stacks offline "
    "(no cloud account, no Pulumi CLI); `pulumi up` deploys them.\n\n"
    "Examples:\n\n"
    "  blueprints validate examples/app.yaml\n\n"
    "  blueprints plan single-vm-hcloud\n\n"
    "  blueprints plan --all --json > plan.json\n\n"
    "  blueprints render single-vm-localstack -o rendered/",
)
out = Console()
err = Console(stderr=True)


class BadInput(Exception):
    """Shown as one red line per problem and exit status 2."""


def _reports_bad_input(command):
    """Turn the project's user-facing errors into red lines on stderr and exit status 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from blueprints.plan import PlanError

        try:
            return command(*args, **kwargs)
        except (SpecError, PlanError, BadInput) as exc:
            for line in str(exc).splitlines():
                err.print(f"[red]error:[/red] {escape(line)}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None

    return wrapper


def _project(project: Path | None):
    from blueprints.plan import find_project

    return find_project(project)


ProjectOpt = Annotated[
    Path | None,
    typer.Option(
        "--project",
        "-C",
        help="Pulumi project directory (holding Pulumi.yaml); default: nearest above the cwd.",
        file_okay=False,
    ),
]


@app.command()
@_reports_bad_input
def validate(
    spec: Annotated[Path, typer.Argument(help="App spec YAML file.", dir_okay=False)],
) -> None:
    """Check an app spec; print every problem with its field path.

    Example: blueprints validate examples/app.yaml
    """
    app_spec = load_spec(spec)
    services = ", ".join(f"{n} x{s.replicas}" for n, s in app_spec.sorted_services())
    out.print(f"[green]ok[/green] {escape(str(spec))}: app {app_spec.name} ({services})")


@app.command()
@_reports_bad_input
def plan(
    stacks: Annotated[
        list[str] | None, typer.Argument(help="Stack names, e.g. single-vm-hcloud.")
    ] = None,
    all_stacks: Annotated[
        bool, typer.Option("--all", help="Plan every stack in the stacks directory.")
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print the resources as a JSON list of {stack, type, name, parent, inputs}; "
            "secret values are masked.",
        ),
    ] = False,
    project: ProjectOpt = None,
) -> None:
    """Evaluate stacks under Pulumi's mock runtime and show what they would create.

    Examples: blueprints plan single-vm-hcloud; blueprints plan --all --json
    """
    from blueprints.plan import list_stacks, plan_stack

    root = _project(project)
    known = list_stacks(root)
    if all_stacks and stacks:
        raise BadInput("give stack names or --all, not both")
    chosen = known if all_stacks else list(stacks or [])
    if not chosen:
        raise BadInput(f"name a stack or pass --all; stacks here: {', '.join(known) or 'none'}")
    unknown = [s for s in chosen if s not in known]
    if unknown:
        raise BadInput(f"unknown stack {unknown[0]!r}; stacks here: {', '.join(known) or 'none'}")

    plans = []
    for stack in chosen:
        if not as_json:
            err.print(f"[dim]planning {stack}...[/dim]")
        plans.append(plan_stack(stack, root))

    if as_json:
        rows = [r.as_json() for p in plans for r in p.resources]
        sys.stdout.write(json.dumps(rows, indent=2, sort_keys=True) + "\n")
        return
    for p in plans:
        _show_plan(p)
    if len(plans) > 1:
        table = Table(title="summary", show_edge=False)
        table.add_column("stack")
        table.add_column("cloud resources", justify="right")
        table.add_column("servers", justify="right")
        for p in plans:
            servers = sum(1 for r in p.custom if r.type.endswith((":Server", ":Instance")))
            table.add_row(p.stack, str(len(p.custom)), str(servers))
        out.print(table)


def _show_plan(p) -> None:
    tree = Tree(f"[bold]{p.stack}[/bold]")
    nodes = {None: tree}
    for r in sorted(p.resources, key=lambda r: (r.parent is not None, r.name)):
        flags = " [yellow](protected)[/yellow]" if r.protect else ""
        label = f"{r.name} [dim]{r.type}[/dim]{flags}"
        parent = nodes.get(r.parent, tree)
        nodes[r.name] = parent.add(label)
    out.print(tree)
    counts = Counter(r.type for r in p.custom)
    summary = ", ".join(f"{n} {t.split(':')[-1]}" for t, n in sorted(counts.items()))
    out.print(f"{len(p.custom)} cloud resources: {summary}")
    for key, value in sorted(p.public_outputs().items()):
        shown = escape(json.dumps(value, sort_keys=True))
        out.print(f"  [cyan]{key}[/cyan]: {shown}", soft_wrap=True)
    for note in p.notes:
        out.print(f"  [yellow]note[/yellow]: {escape(note)}", soft_wrap=True)
    out.print()


@app.command()
@_reports_bad_input
def render(
    stack: Annotated[str, typer.Argument(help="Stack name, e.g. single-vm-hcloud.")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Directory to write into; default rendered/<stack>."),
    ] = None,
    project: ProjectOpt = None,
) -> None:
    """Write every file the stack's VMs run (user data and each file it installs) to disk.

    Secrets appear as placeholders. Example: blueprints render single-vm-hcloud -o rendered/
    """
    from blueprints.plan import list_stacks, plan_stack
    from blueprints.render.unpack import stack_files

    root = _project(project)
    known = list_stacks(root)
    if stack not in known:
        raise BadInput(f"unknown stack {stack!r}; stacks here: {', '.join(known) or 'none'}")
    target = output or Path("rendered") / stack
    if target.exists() and not target.is_dir():
        raise BadInput(f"{target}: exists and is not a directory")
    files = stack_files(plan_stack(stack, root))
    _write_tree(target, files)
    out.print(f"[green]wrote[/green] {len(files)} files to {target}/")
    for path in sorted(files):
        out.print(f"  {path}")


def _write_tree(target: Path, files: dict[str, str]) -> None:
    """Write all files or none: build the tree beside the target, then swap it in."""
    if target.exists() and not target.is_dir():
        raise BadInput(f"{target}: exists and is not a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for rel, text in files.items():
            dest = staging / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text, encoding="utf-8")
        if target.exists():
            old = target.with_name(f".{target.name}-old-{os.getpid()}")
            target.rename(old)
            staging.rename(target)
            _rmtree(old)
        else:
            staging.rename(target)
    except BaseException:
        _rmtree(staging)
        raise


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    """Console entry point. Usage errors exit 2 (click's convention), as does bad input."""
    app()


if __name__ == "__main__":
    main()
