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

from blueprints import scaffold
from blueprints.spec import SpecError, load_spec

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_REFUSED = 3

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


def _require_stacks(root: Path, stacks: list[str], known: list[str] | None = None) -> None:
    from blueprints.plan import list_stacks

    known = known if known is not None else list_stacks(root)
    for stack in stacks:
        if stack not in known:
            raise BadInput(f"unknown stack {stack!r}; stacks here: {', '.join(known) or 'none'}")


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
    _require_stacks(root, chosen, known)

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
    from blueprints.plan import plan_stack
    from blueprints.render.unpack import stack_files

    root = _project(project)
    _require_stacks(root, [stack])
    target = output or Path("rendered") / stack
    _check_output_dir(target)
    files = stack_files(plan_stack(stack, root))
    try:
        _write_tree(target.resolve(), files)
    except OSError as exc:
        raise BadInput(f"{target}: cannot be written ({exc.strerror or exc})") from None
    out.print(f"[green]wrote[/green] {len(files)} files to {target}/")
    for path in sorted(files):
        out.print(f"  {path}")


def _answer(flag: str, text: str):
    """An option of `blueprints new` that answers one of the scaffold's questions."""
    return typer.Option(flag, help=text, rich_help_panel="Answers (default: the template's)")


@app.command()
@_reports_bad_input
def new(
    directory: Annotated[
        Path | None,
        typer.Argument(
            help="Directory for the project, new or empty; default ./<project slug>.",
            file_okay=False,
        ),
    ] = None,
    no_input: Annotated[
        bool,
        typer.Option("--no-input", help="Ask nothing: the options given, defaults for the rest."),
    ] = False,
    project_name: Annotated[
        str | None, _answer("--project-name", "Free text for the README; default Shop.")
    ] = None,
    project_slug: Annotated[
        str | None,
        _answer(
            "--project-slug",
            "App and Pulumi project name, a DNS label; default: the name, slugified.",
        ),
    ] = None,
    domain: Annotated[
        str | None, _answer("--domain", "Domain served with TLS; default <slug>.example.com.")
    ] = None,
    acme_email: Annotated[
        str | None, _answer("--acme-email", "ACME account e-mail; default ops@<domain>.")
    ] = None,
    blueprint: Annotated[
        str | None,
        _answer(
            "--blueprint",
            f"{', '.join(scaffold.BLUEPRINTS)} or {scaffold.ALL_BLUEPRINTS}; default single-vm.",
        ),
    ] = None,
    target: Annotated[
        str | None,
        _answer(
            "--target",
            f"{', '.join(scaffold.TARGETS)} or {scaffold.BOTH_TARGETS}; default both.",
        ),
    ] = None,
    hcloud_location: Annotated[
        str | None, _answer("--hcloud-location", "Hetzner Cloud location; default fsn1.")
    ] = None,
    admin_cidr: Annotated[
        str | None,
        _answer("--admin-cidr", "Network allowed to reach SSH; default 203.0.113.0/24."),
    ] = None,
    ssh_public_key: Annotated[
        str | None,
        _answer(
            "--ssh-public-key", "Your SSH public key file, read now; default ~/.ssh/id_ed25519.pub."
        ),
    ] = None,
) -> None:
    """Bake your own project from the scaffold: app spec, stacks, Pulumi project, tests, CI.

    Without --no-input it asks for every answer (options become the suggested ones). All of the
    project is written, or none of it. Example:
    blueprints new shop-infra --no-input --blueprint all --domain shop.example.org
    """
    given = {
        key: value
        for key, value in {
            "project_name": project_name,
            "project_slug": project_slug,
            "domain": domain,
            "acme_email": acme_email,
            "blueprint": blueprint,
            "target": target,
            "hcloud_location": hcloud_location,
            "admin_cidr": admin_cidr,
            "ssh_public_key": ssh_public_key,
        }.items()
        if value is not None
    }
    try:
        path = scaffold.bake(directory, given, no_input=no_input)
    except scaffold.ScaffoldError as exc:
        raise BadInput(str(exc)) from None
    except scaffold.AnswersRefused:
        raise typer.Exit(EXIT_BAD_INPUT) from None  # the template's hook printed why
    shown = os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)
    stacks = sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in (path / "stacks").iterdir())
    out.print(f"[green]baked[/green] {escape(shown)}/ with stacks {', '.join(stacks)}")
    out.print(f"next: cd {escape(shown)} && uv sync && uv run pytest; README.md has the rest")


def _duration(text: str) -> float:
    from blueprints.spec import _duration as parse

    try:
        return float(parse(text))
    except ValueError:
        raise BadInput(f"--for: {text!r} is not a duration such as 55s, 10m or 1h") from None


def _session(stack: str, project: Path | None):
    from blueprints.failover.session import open_session

    root = _project(project)
    _require_stacks(root, [stack])
    return open_session(root, stack)


def _promotion(session):
    from blueprints.failover.promote import Promotion

    return Promotion(
        session.cloud,
        session.probe,
        session.record,
        log=lambda m: err.print(f"[dim]{escape(m)}[/dim]"),
    )


def _failover_errors(command):
    """Cloud failures exit 1; a refusal (nothing changed, a person must decide) exits 3."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from blueprints.failover.cloud import CloudError
        from blueprints.failover.promote import PromotionRefused

        try:
            return command(*args, **kwargs)
        except PromotionRefused as exc:
            err.print(f"[yellow]refused:[/yellow] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(EXIT_REFUSED) from None
        except CloudError as exc:
            err.print(f"[red]failed:[/red] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(EXIT_FAILED) from None

    return wrapper


def _active(session) -> str:
    from blueprints.failover.session import read_stack

    return read_stack(session.project_dir, session.stack)[1].active


@app.command()
@_reports_bad_input
@_failover_errors
def promote(
    stack: Annotated[str, typer.Argument(help="A single-vm stack, e.g. single-vm-hcloud.")],
    to: Annotated[
        str | None,
        typer.Option("--to", help="primary or spare; default: the node that is not active."),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Promote although the app is healthy (planned switchover), or although the old "
            "node cannot be confirmed off (you fenced it yourself).",
        ),
    ] = False,
    takeover: Annotated[
        bool, typer.Option("--takeover", help="Continue a promotion another run left behind.")
    ] = False,
    notify: Annotated[
        str | None, typer.Option("--notify", help="Webhook URL to POST a summary to (JSON).")
    ] = None,
    project: ProjectOpt = None,
) -> None:
    """Fail over to the parked node: fence, move the volume, boot, move the floating IP, record.

    Safe to rerun: every step checks the cloud first, so a rerun finishes an interrupted
    promotion. Example: HCLOUD_TOKEN=... blueprints promote single-vm-hcloud
    """
    from blueprints.failover.promote import Options

    if to is not None and to not in ("primary", "spare"):
        raise BadInput(f"--to: must be primary or spare (got {to!r})")
    session = _session(stack, project)
    opts = Options(
        target=to, force=force, takeover=takeover, health_timeout=session.settings.promote_timeout
    )
    _report(session, _promotion(session).run(_active(session), opts), notify)


@app.command()
@_reports_bad_input
@_failover_errors
def watch(
    stack: Annotated[str, typer.Argument(help="A single-vm stack, e.g. single-vm-hcloud.")],
    for_: Annotated[
        str | None,
        typer.Option(
            "--for",
            help="Stop after this long (e.g. 55s) for a scheduled CI job; default: forever.",
        ),
    ] = None,
    notify: Annotated[
        str | None, typer.Option("--notify", help="Webhook URL to POST a summary to (JSON).")
    ] = None,
    project: ProjectOpt = None,
) -> None:
    """Probe the app's health URL on the floating IP; promote after K failures in a row.

    Interval, K and timeouts are stack config (blueprints:watchInterval, watchFailures, ...).
    Example: blueprints watch single-vm-hcloud --for 55s
    """
    from blueprints.failover.promote import Options
    from blueprints.failover.watch import watch as run_watch

    duration = _duration(for_) if for_ else None
    session = _session(stack, project)
    s = session.settings
    err.print(
        f"watching {session.app.domain} every {s.watch_interval}s, promoting after "
        f"{s.watch_failures} failures in a row" + (f", for {for_}" if for_ else "")
    )
    result = run_watch(
        _promotion(session),
        lambda: _active(session),
        interval=s.watch_interval,
        failures=s.watch_failures,
        duration=duration,
        options=Options(health_timeout=s.promote_timeout),
        log=lambda m: err.print(escape(m), soft_wrap=True),
    )
    if result.promoted is None:
        out.print(
            f"{result.probes} probes, {result.failures_in_a_row} failing at the end; no promotion"
        )
        return
    _report(session, result.promoted, notify)


@app.command()
@_reports_bad_input
@_failover_errors
def park(
    stack: Annotated[str, typer.Argument(help="A single-vm stack, e.g. single-vm-hcloud.")],
    project: ProjectOpt = None,
) -> None:
    """Power the standby (the node that is not active) off again, e.g. after repairing it."""
    from blueprints.failover.promote import park as do_park

    session = _session(stack, project)
    message = do_park(session.cloud, session.settings.active, log=lambda m: err.print(escape(m)))
    out.print(escape(message), soft_wrap=True)


def _report(session, result, notify: str | None) -> None:
    """Print what a promotion did and, with --notify, POST the same sentence."""
    if result.already:
        summary = f"{session.stack}: already running on {result.target}. {result.recorded}"
    else:
        steps = ", ".join(result.done) or "nothing to do"
        summary = f"{session.stack}: promoted {result.target} ({steps}). {result.recorded}"
    out.print(escape(summary), soft_wrap=True)
    if notify:
        _notify(notify, session, summary)


def _notify(url: str, session, summary: str) -> None:
    """POST {"text": ...} (Slack/Mattermost style); a failed notification is only a warning."""
    import urllib.request

    body = json.dumps({"text": summary, "stack": session.stack}).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10):
            pass
    except OSError as exc:
        err.print(f"[yellow]warning:[/yellow] notifying {url} failed: {escape(str(exc))}")


RENDER_MARKER = ".blueprints-render"


def _check_output_dir(target: Path) -> None:
    """Only a new directory, an empty one, or one an earlier render wrote may be replaced."""
    if target.exists() and not target.is_dir():
        raise BadInput(f"{target}: exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not (target / RENDER_MARKER).is_file():
        raise BadInput(
            f"{target}: is a non-empty directory that `blueprints render` did not write; "
            "choose a new or empty directory (its contents would be replaced)"
        )
    for parent in target.parents:
        if parent.exists() and not parent.is_dir():
            raise BadInput(f"{target}: {parent} is not a directory")


def _write_tree(target: Path, files: dict[str, str]) -> None:
    """Write all files or none: build the tree beside the target, then swap it in."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        (staging / RENDER_MARKER).write_text(
            "Written by `blueprints render`; the next render replaces this directory.\n"
        )
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
