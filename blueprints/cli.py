"""The `blueprints` command: plan stacks offline, render what the VMs run, validate a spec."""

from __future__ import annotations

import contextlib
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


def _console(stderr: bool = False) -> Console:
    """A console that wraps only on a terminal: piped output (a CI log, a file) keeps each line
    whole instead of folding it at 80 columns; tables still fit the width (COLUMNS, else 80)."""
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console.soft_wrap = True
    return console


out = _console()
err = _console(stderr=True)


@contextlib.contextmanager
def _progress(what: str):
    """Show progress of a long command on stderr: a spinner with the current step on a terminal,
    one dim line per step otherwise (a CI log). Yields step(text) to report the next step."""
    if err.is_terminal:
        with err.status(f"[dim]{escape(what)}...[/dim]") as status:
            yield lambda text: status.update(f"[dim]{escape(what)}: {escape(text)}...[/dim]")
    else:
        err.print(f"[dim]{escape(what)}...[/dim]", highlight=False)
        yield lambda text: err.print(f"[dim]  {escape(text)}...[/dim]", highlight=False)


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
    blueprint: Annotated[
        str | None,
        typer.Option(
            "--blueprint",
            "-b",
            help="Also check the rules of this blueprint (single-vm, compose, nomad, k8s): "
            "what the spec must satisfy to run on it.",
        ),
    ] = None,
) -> None:
    """Check an app spec; print every problem with its field path.

    Examples: blueprints validate examples/app.yaml; blueprints validate app.yaml -b nomad
    """
    from blueprints.settings import BLUEPRINTS

    if blueprint is not None and blueprint not in BLUEPRINTS:
        raise BadInput(
            f"--blueprint: unknown blueprint {blueprint!r}; choose one of {', '.join(BLUEPRINTS)}"
        )
    app_spec = load_spec(spec)
    if blueprint is not None:
        from blueprints.spec import format_path
        from blueprints.stack import blueprint_class

        problems = blueprint_class(blueprint).check(app_spec)
        if problems:
            raise SpecError(
                [
                    f"{spec}: {format_path(path)}: {message} ({blueprint})"
                    for path, message in problems
                ]
            )
    services = ", ".join(f"{n} x{s.replicas}" for n, s in app_spec.sorted_services())
    fits = f"; fits {blueprint}" if blueprint is not None else ""
    out.print(f"[green]ok[/green] {escape(str(spec))}: app {app_spec.name} ({services}){fits}")


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
    """Write every file the stack's VMs run to disk: each server's bootstrap (its user data and
    each file it installs) and, beside them in release/, the app's release (the document the
    node receives and each file in it).

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


COMPARE_FORMATS = ("table", "markdown", "json", "html")


@app.command()
@_reports_bad_input
def compare(
    spec: Annotated[
        Path | None,
        typer.Option(
            "--spec", help="App spec to compare with; default: each stack's own.", dir_okay=False
        ),
    ] = None,
    target: Annotated[
        str, typer.Option("--target", "-t", help="hcloud, localstack or aws.")
    ] = "hcloud",
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="table, markdown, json or html.")
    ] = "table",
    chart: Annotated[
        Path | None,
        typer.Option("--chart", help="Also draw cost vs recovery vs moving parts (.svg or .png)."),
    ] = None,
    live_prices: Annotated[
        bool,
        typer.Option(
            "--live-prices",
            help="hcloud: read Hetzner's current prices from its API (needs HCLOUD_TOKEN) "
            "instead of the table shipped with blueprints.",
        ),
    ] = False,
    project: ProjectOpt = None,
) -> None:
    """Compare the four blueprints for one target: VMs, cost per month, moving parts, lines
    of configuration, and what happens when a VM dies. Everything is derived from the stacks'
    offline plans and rendered files.

    Examples: blueprints compare; blueprints compare -t localstack -f markdown --chart ladder.svg
    """
    from blueprints import compare_output
    from blueprints.compare import TARGETS, CompareError, hcloud_location
    from blueprints.compare import compare as run_compare
    from blueprints.costs import PriceError, shipped_tables

    if target not in TARGETS:
        raise BadInput(f"--target: unknown target {target!r}; allowed: {', '.join(TARGETS)}")
    if fmt not in COMPARE_FORMATS:
        raise BadInput(f"--format: unknown format {fmt!r}; allowed: {', '.join(COMPARE_FORMATS)}")
    if chart is not None and chart.suffix.lower() not in compare_output.CHART_SUFFIXES:
        raise BadInput(f"--chart: {chart} must end in .svg or .png")
    if chart is not None and not chart.resolve().parent.is_dir():
        raise BadInput(f"--chart: directory {chart.parent} does not exist")
    if spec is not None and not spec.is_file():
        raise BadInput(f"--spec: {spec} does not exist")
    tables = dict(shipped_tables())
    try:
        if live_prices and target == "hcloud":
            token = os.environ.get("HCLOUD_TOKEN")
            if not token:
                raise BadInput("--live-prices needs HCLOUD_TOKEN (a read-only Hetzner API token)")
            from blueprints.costs import live_hcloud_table

            err.print("[dim]reading Hetzner's price list...[/dim]")
            location = hcloud_location(_project(project), target)
            tables["hcloud"] = live_hcloud_table(
                token, os.environ.get("HCLOUD_ENDPOINT"), location=location
            )
        elif live_prices:
            err.print(
                f"[yellow]note[/yellow] --live-prices reads Hetzner's prices; {target} "
                "is priced from the shipped AWS table"
            )
        err.print(f"[dim]planning the {target} stacks...[/dim]")
        comparison = run_compare(target, project_dir=_project(project), spec=spec, tables=tables)
    except (CompareError, PriceError) as exc:
        raise BadInput(str(exc)) from None
    if fmt == "json":
        sys.stdout.write(compare_output.to_json(comparison))
    elif fmt == "markdown":
        sys.stdout.write(compare_output.to_markdown(comparison))
    elif fmt == "html":
        sys.stdout.write(compare_output.to_html(comparison))
    else:
        _show_comparison(comparison)
    if chart is not None:
        try:
            compare_output.write_chart(comparison, chart)
        except OSError as exc:
            raise BadInput(f"--chart: {chart} cannot be written ({exc.strerror or exc})") from None
        err.print(f"[green]wrote[/green] {chart}")


def _show_comparison(comparison) -> None:
    from blueprints.compare_output import cost_rows, sources, summary_rows
    from blueprints.failure import seconds_text

    summary = [{k: v for k, v in r.items() if k != "stack"} for r in summary_rows(comparison)]
    for title, rows in (
        (f"{comparison.app} on {comparison.target}", summary),
        ("monthly cost", cost_rows(comparison)),
    ):
        table = Table(title=title, show_edge=False)
        for i, head in enumerate(rows[0]):
            table.add_column(head, justify="left" if i == 0 else "right", overflow="fold")
        for row in rows:
            table.add_row(*(escape(v) for v in row.values()))
        out.print(table)
    for row in comparison.rows:
        f = row.failure
        out.print(f"[bold]{escape(row.label)}[/bold]: {escape(f.detects)}; {escape(f.recovers)}")
        for s in f.scenarios:
            how = seconds_text(s.seconds)
            out.print(f"  {escape(s.dies)} dies: [cyan]{how}[/cyan], {escape(s.effect)}")
    for row in comparison.rows:
        for note in row.notes:
            out.print(f"[yellow]note[/yellow] {escape(row.label)}: {escape(note)}", soft_wrap=True)
        for line in row.cost.unpriced:
            out.print(
                f"[yellow]not priced[/yellow] {escape(row.label)}: {escape(line)}", soft_wrap=True
            )
    for line in sources(comparison):
        out.print(f"[dim]{escape(line)}[/dim]", soft_wrap=True)


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
        log=lambda m: err.print(f"[dim]{escape(m)}[/dim]", soft_wrap=True),
    )


def _failover_errors(command):
    """Cloud failures and a command past its budget exit 1; a refusal (nothing changed, a
    person must decide) exits 3, and so does a run stopped because another run took its lock
    over ("stopped", not "refused": it may have changed something before)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from blueprints.failover.cloud import CloudError
        from blueprints.failover.promote import PromotionRefused, PromotionTakenOver
        from blueprints.failover.session import DeadlineExceeded

        try:
            return command(*args, **kwargs)
        except PromotionTakenOver as exc:
            err.print(f"[yellow]stopped:[/yellow] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(EXIT_REFUSED) from None
        except PromotionRefused as exc:
            err.print(f"[yellow]refused:[/yellow] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(EXIT_REFUSED) from None
        except (CloudError, DeadlineExceeded) as exc:
            err.print(f"[red]failed:[/red] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(EXIT_FAILED) from None

    return wrapper


def _active(session) -> str:
    """The stack file's blueprints:active: only the fallback; the cloud says which is active.
    Read again each time: a long-lived watchdog's own promotions rewrite the file."""
    from blueprints.failover.session import stack_settings

    return stack_settings(session.project_dir, session.stack)[2].active


def _promote_once(session, target: str | None = None, force: bool = False, takeover: bool = False):
    """One promotion within its budget (Options.budget); a run still going `grace` past the
    budget is stopped where it is (DeadlineExceeded)."""
    from blueprints.failover.promote import Options
    from blueprints.failover.session import DeadlineExceeded, deadline, grace, promote_budget

    s = session.settings
    budget = promote_budget(s)
    opts = Options(
        target=target,
        force=force,
        takeover=takeover,
        health_timeout=s.promote_timeout,
        lock_ttl=s.lock_ttl,
        budget=budget,
    )
    stopped = (
        f"the promotion did not finish within its budget of {budget:g}s (promoteTimeout + "
        f"20 x apiTimeout) and was stopped"
    )
    promotion = _promotion(session)
    try:
        with deadline(budget + grace(s), stopped):
            return promotion.run(opts, _active(session))
    except DeadlineExceeded:
        # Stopped where it was: leave a lock that says so, within one more apiTimeout.
        outcome = f"a lock it took expires after lockTtl ({s.lock_ttl}s)"
        with contextlib.suppress(DeadlineExceeded), deadline(s.api_timeout + 1, stopped):
            outcome = promotion.abandon()
        raise DeadlineExceeded(f"{stopped}; {outcome}; rerun promote to finish it") from None


def _promote_away(session, dead: str):
    """The watchdog's promotion: away from the node it judged dead, to the other one. Its
    judgement decides the direction, not a second look at the app or an old failed record: a
    second watchdog arriving after the first finished finds the target in place and only
    records."""
    from blueprints.failover.cloud import NODES

    return _promote_once(session, target=NODES[1 - NODES.index(dead)])


NotifyOpt = Annotated[
    str | None,
    typer.Option(
        "--notify",
        envvar="BLUEPRINTS_NOTIFY",
        show_envvar=True,
        help='Webhook URL to POST a JSON summary to ({"text", "stack", "event"}).',
    ),
]


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
        bool,
        typer.Option(
            "--takeover",
            help="Take the stack's promotion lock from a run that holds it (that run stops "
            "before its next step).",
        ),
    ] = False,
    notify: NotifyOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Fail over to the standby: fence, move the volume, boot, move the floating IP, record.

    Safe to rerun: every step checks the cloud first, so a rerun finishes an interrupted
    promotion. Bounded: at most promoteTimeout + 20 x apiTimeout (default 500 s).
    Example: HCLOUD_TOKEN=... blueprints promote single-vm-hcloud
    """
    if to is not None and to not in ("primary", "spare"):
        raise BadInput(f"--to: must be primary or spare (got {to!r})")
    session = _session(stack, project)
    _report(session, _promote_once(session, to, force, takeover), notify)


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
    notify: NotifyOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Watch the app on its floating IP; promote only when its host is dead.

    After watchFailures failed probes in a row the host is checked on three paths (the public
    side: its address and the floating IP; its private address, from the other node only; the
    cloud status): unreachable on two, the standby is promoted; otherwise it is an alert
    (logged, and sent to --notify once per incident). Without --for it runs until stopped and
    keeps watching after a promotion (`blueprints watchdog-unit` prints a systemd unit for
    it). Exit status with --for: 0 all well (a completed promotion included), 1 a cloud
    failure, 3 a promotion refused or stopped, 4 an alert was raised. Example: blueprints
    watch single-vm-hcloud --for 55s
    """
    from blueprints.failover.cloud import CloudError
    from blueprints.failover.hostcheck import HostCheck
    from blueprints.failover.session import DeadlineExceeded, Notifier
    from blueprints.failover.watch import Watchdog

    duration = _duration(for_) if for_ else None
    session = _session(stack, project)
    s = session.settings
    notifier = Notifier(notify, stack, s.api_timeout, _warn) if notify else None

    # A watchdog records through the stack file only: under the unit's ProtectHome=read-only
    # the Pulumi CLI (Automation API) cannot write its own state, even when it is on PATH.
    session.use_pulumi = False

    def promote_now(dead: str):
        try:
            return _promote_away(session, dead)
        except DeadlineExceeded as exc:
            raise CloudError(str(exc)) from None

    err.print(
        f"watching {session.app.domain}: a probe every {s.watch_interval}s, the host checked "
        f"after {s.watch_failures} failures in a row, "
        + (f"for {for_}" if for_ else "until stopped"),
        soft_wrap=True,
        highlight=False,
    )
    dog = Watchdog(
        session.cloud,
        session.check,
        promote_now,
        HostCheck(s.subnet_cidr, port=session.health_port, timeout=s.probe_timeout),
        configured=_active(session),
        interval=s.watch_interval,
        failures=s.watch_failures,
        api_timeout=s.api_timeout,
        log=lambda m: err.print(escape(m), soft_wrap=True, highlight=False),
        notify=(lambda event, text: notifier(event, f"{stack}: {text}"))
        if notifier
        else (lambda _e, _t: None),
        on_promoted=lambda result: _report(session, result, None, notifier),
    )
    try:
        result = dog.run(duration)
    except KeyboardInterrupt:
        err.print("stopped")
        raise typer.Exit(130) from None
    finally:
        if notifier:
            notifier.close()
    if result.blind is not None:
        err.print(
            f"[red]failed:[/red] could not read the stack from the cloud in {for_}: "
            f"{escape(result.blind)}",
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_FAILED)
    promotions = len(result.promotions)
    out.print(
        f"{result.probes} probes, {result.failures_in_a_row} failing at the end; "
        + (f"{promotions} promotion(s)" if promotions else "no promotion")
        + (f", {result.alerts} alert(s)" if result.alerts else "")
        + (f", {len(result.refusals)} refused" if result.refusals else "")
        + (f", {len(result.failures)} failed" if result.failures else ""),
        highlight=False,
    )
    if result.exit_code:
        raise typer.Exit(result.exit_code)


@app.command()
@_reports_bad_input
@_failover_errors
def park(
    stack: Annotated[str, typer.Argument(help="A single-vm stack, e.g. single-vm-hcloud.")],
    project: ProjectOpt = None,
) -> None:
    """Power the standby (the node that is not active) off, e.g. after repairing it.

    Bounded: at most 10 x apiTimeout (default 100 s)."""
    from blueprints.failover.promote import park as do_park
    from blueprints.failover.session import deadline, grace, park_budget

    session = _session(stack, project)
    s = session.settings
    budget = park_budget(s)
    stopped = (
        f"park did not finish within its budget of {budget:g}s (10 x apiTimeout) and was "
        f"stopped; its lock expires after lockTtl ({s.lock_ttl}s), then rerun park"
    )
    with deadline(budget + grace(s), stopped):
        message = do_park(
            session.cloud,
            _active(session),
            log=lambda m: err.print(f"[dim]{escape(m)}[/dim]", soft_wrap=True),
            lock_ttl=s.lock_ttl,
            budget=budget,
        )
    out.print(escape(message), soft_wrap=True)


@app.command("watchdog-unit")
@_reports_bad_input
def watchdog_unit(
    stack: Annotated[str, typer.Argument(help="A single-vm stack, e.g. single-vm-hcloud.")],
    user: Annotated[
        str, typer.Option("--user", help="The account the watchdog runs as (not root).")
    ] = "blueprints",
    env_file: Annotated[
        str | None,
        typer.Option(
            "--env-file",
            help="Root-only file with HCLOUD_TOKEN (or the AWS variables) and optionally "
            "BLUEPRINTS_NOTIFY; default /etc/blueprints-watch/<stack>.env.",
        ),
    ] = None,
    command: Annotated[
        str | None,
        typer.Option(
            "--command",
            help="The blueprints executable; default <project>/.venv/bin/blueprints "
            "(what `uv sync` installs).",
        ),
    ] = None,
    project: ProjectOpt = None,
) -> None:
    """Print a systemd unit running `blueprints watch <stack>` for good (Restart=always).

    The project path is the checkout on the machine that runs it (a warm spare, or any
    machine). Example: blueprints watchdog-unit single-vm-hcloud -C /opt/shop-infra >
    /etc/systemd/system/blueprints-watch-single-vm-hcloud.service
    """
    from blueprints.failover.session import read_stack
    from blueprints.failover.watch import watchdog_unit as render_unit
    from blueprints.render.common import unit_word

    root = _project(project).resolve()
    _require_stacks(root, [stack])
    read_stack(root, stack)  # a single-vm stack whose settings (healthUrl, ...) are valid
    env_file = env_file or f"/etc/blueprints-watch/{stack}.env"
    command = command or str(root / ".venv/bin/blueprints")
    if user == "root":
        raise BadInput("--user: run the watchdog as an unprivileged account, not root")
    for label, value in (
        ("--project", str(root)),
        ("--user", user),
        ("--env-file", env_file),
        ("--command", command),
    ):
        try:
            unit_word(value)
        except ValueError as exc:
            raise BadInput(f"{label}: {exc}") from None
    for label, value in (("--env-file", env_file), ("--command", command)):
        if not value.startswith("/"):
            raise BadInput(f"{label}: must be an absolute path (got {value!r})")
    sys.stdout.write(render_unit(stack, str(root), user, env_file, command))


def _warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True)


def _report(session, result, notify: str | None, notifier=None) -> None:
    """Print what a promotion did and, with --notify, POST the same sentence."""
    if result.already:
        summary = f"{session.stack}: already running on {result.target}. {result.recorded}"
    else:
        steps = ", ".join(result.done) or "nothing to do"
        summary = f"{session.stack}: promoted {result.target} ({steps}). {result.recorded}"
    note = getattr(result, "note", "")
    if note:
        err.print(f"note: {escape(note)}", soft_wrap=True, highlight=False)
    out.print(escape(summary), soft_wrap=True, highlight=False)
    if notifier is not None:
        notifier("promoted", summary)
    elif notify:
        _notify(notify, session, summary)


def _notify(url: str, session, summary: str, event: str = "promoted") -> None:
    """POST {"text", "stack", "event"} (Slack/Mattermost style), bounded by apiTimeout; a
    failed notification is only a warning."""
    from blueprints.failover.session import Notifier

    notifier = Notifier(url, session.stack, session.settings.api_timeout, _warn)
    notifier(event, summary)
    notifier.close()


RENDER_MARKER = ".blueprints-render"


# --- backups -------------------------------------------------------------------------------------

OutputsOpt = Annotated[
    Path | None,
    typer.Option(
        "--outputs",
        help="The stack's outputs as `pulumi stack output --json --show-secrets` prints them "
        "(default: run that command).",
    ),
]


def _backup_session(stack: str, project: Path | None, outputs_file: Path | None):
    """The SSH session to the node holding the stack's data, and the commands to run there."""
    from blueprints.backup.remote import RemoteError, Session, read_outputs
    from blueprints.failover.session import stack_settings
    from blueprints.stack import blueprint_class

    root = _project(project)
    _require_stacks(root, [stack])
    _, _, settings = stack_settings(root, stack)
    app = load_spec(root / settings.spec)
    try:
        outputs = read_outputs(stack, root, outputs_file)
        access = blueprint_class(settings.blueprint).backup_access(app, outputs)
    except RemoteError as exc:
        raise BadInput(str(exc)) from None
    if "backupRepository" not in outputs:
        raise BadInput(
            f"{stack}: takes no backups (no backupRepository output): set the stack's backup "
            "storage (README: Backups) and run `pulumi up`"
        )
    return Session(access)


def _remote(session, command: str, capture: bool, what: str):
    from blueprints.backup.remote import RemoteError

    try:
        done = session.run(command, capture)
    except RemoteError as exc:
        raise BadInput(str(exc)) from None
    if done.returncode == 255:
        raise BadInput(
            f"cannot reach {session.access.host} over ssh as deploy"
            + (f" ({done.stderr.strip().splitlines()[-1]})" if capture and done.stderr else "")
        )
    if done.returncode != 0:
        if capture and done.stderr:
            for line in done.stderr.strip().splitlines():
                err.print(escape(line), highlight=False, soft_wrap=True)
        err.print(f"[red]failed:[/red] {what} (exit {done.returncode})")
        raise typer.Exit(EXIT_FAILED)
    return done


@app.command("backup")
@_reports_bad_input
def backup_now(
    stack: Annotated[str, typer.Argument(help="The stack, e.g. compose-hcloud.")],
    outputs: OutputsOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Back the stack's data up now (besides the schedule), on the node that holds it.

    Example: blueprints backup compose-hcloud
    """
    with _backup_session(stack, project, outputs) as session:
        err.print(f"[dim]backing up on {escape(session.access.host)}...[/dim]")
        _remote(session, session.access.now, capture=False, what="the backup")


@app.command("backups")
@_reports_bad_input
def backups_list(
    stack: Annotated[str, typer.Argument(help="The stack, e.g. compose-hcloud.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    outputs: OutputsOpt = None,
    project: ProjectOpt = None,
) -> None:
    """List the stack's snapshots (oldest first) with their time and size.

    Example: blueprints backups compose-hcloud
    """
    with _backup_session(stack, project, outputs) as session:
        done = _remote(session, session.access.snapshots, capture=True, what="listing snapshots")
    try:
        rows = json.loads(done.stdout)
    except ValueError:
        rows = None
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise BadInput("the node's snapshot list is not a JSON list of snapshots")
    if as_json:
        out.print_json(json.dumps(rows, sort_keys=True))
        return
    from blueprints.backup.node_backup import human

    table = Table("snapshot", "time (UTC)", "size", "paths")
    for row in rows:
        size = row.get("size")
        if size is None and isinstance(row.get("summary"), dict):
            # restic 0.17+ records it in the snapshot (what the k8s rung lists as it is).
            size = row["summary"].get("total_bytes_processed")
        table.add_row(
            escape(str(row.get("short_id", "?"))),
            escape(str(row.get("time", "?"))[:19].replace("T", " ")),
            human(size) if isinstance(size, int | float) else "?",
            escape(" ".join(row.get("paths", []))),
        )
    out.print(table)
    out.print(f"{len(rows)} snapshot(s)")


@app.command("restore")
@_reports_bad_input
def restore(
    stack: Annotated[str, typer.Argument(help="The stack, e.g. compose-hcloud.")],
    snapshot: Annotated[
        str, typer.Option("--snapshot", help="Snapshot id (see `blueprints backups`) or latest.")
    ] = "latest",
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask before acting.")] = False,
    outputs: OutputsOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Put the stack's data back as a snapshot holds it: prints the steps, asks, then acts.

    The app is stopped before its volumes are touched; the data as it was is kept beside them.
    Example: blueprints restore compose-hcloud --snapshot 4f2a9c1e
    """
    import re

    if not re.fullmatch(r"latest|[0-9a-f]{8,64}", snapshot):
        raise BadInput(f"--snapshot: {snapshot!r} is not a snapshot id (hex) or latest")
    with _backup_session(stack, project, outputs) as session:
        if snapshot == "latest" and session.access.pin_latest:
            # the newest now, by its id: a backup taken while you read the steps changes nothing
            listed = _remote(session, session.access.snapshots, capture=True, what="listing")
            try:
                rows = json.loads(listed.stdout)
                newest = rows[-1]
                snapshot = str(newest["short_id"])
            except (ValueError, IndexError, KeyError, TypeError):
                raise BadInput(f"{stack}: has no snapshot to restore") from None
            if not re.fullmatch(r"[0-9a-f]{8,64}", snapshot):
                raise BadInput(f"the node's newest snapshot id {snapshot!r} is not one")
            out.print(f"latest is snapshot {escape(snapshot)} ({escape(str(newest.get('time')))})")
        steps = _remote(
            session, session.access.restore_plan(snapshot), capture=True, what="planning"
        )
        out.print(f"Restoring snapshot {escape(snapshot)} on {escape(session.access.host)}:")
        out.print(escape(steps.stdout.rstrip()), highlight=False)
        if not yes:
            if not sys.stdin.isatty():
                raise BadInput("not confirmed: pass --yes to restore without a question")
            if not typer.confirm("Go ahead?", default=False):
                err.print("nothing was done")
                raise typer.Exit(EXIT_REFUSED)
        _remote(session, session.access.restore(snapshot), capture=False, what="the restore")


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


# --- preview-report (issue 9) -----------------------------------------------------------------

EXIT_DATA_LOSS = 4  # `preview-report --fail-on data-loss` and a stateful resource is at risk
EXIT_PREVIEW_FAILED = 5  # `--fail-on data-loss` and a preview reported errors: data loss unknown
FAIL_ON = ("data-loss", "review")
# `--fail-on review` also fails (exit 6) on replaced/deleted resources of types the
# stateful table does not know (report "review" level); it implies data-loss.
EXIT_REVIEW = 6

# Options preview-report and diff share: both end in the same report (_publish_report).
ReportOutputOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Write the markdown here instead of stdout."),
]
FailOnOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--fail-on",
        help=f"data-loss: exit {EXIT_DATA_LOSS} (after printing and posting the report) when a "
        "resource of a stateful type (blueprints/preview/stateful.yaml: volumes, IPs, databases, "
        "buckets, keys...), a protected resource or a server holding a volume or cluster state "
        f"would be replaced or deleted, and {EXIT_PREVIEW_FAILED} when a preview reported "
        f"errors. review: that too, and exit {EXIT_REVIEW} when a resource of a type not known "
        "to hold no data would be replaced or deleted.",
    ),
]
GitLabOpt = Annotated[
    bool,
    typer.Option(
        "--gitlab",
        help="Post the report as one note on the merge request (updated in place on later "
        "runs); needs CI_API_V4_URL, CI_PROJECT_ID, CI_MERGE_REQUEST_IID and GITLAB_TOKEN.",
    ),
]
NoPricesOpt = Annotated[bool, typer.Option("--no-prices", help="Leave the monthly cost delta out.")]
# More stateful types for the data-loss gate.
StatefulOpt = Annotated[
    Path | None,
    typer.Option(
        "--stateful",
        help="A YAML file of more types for the data-loss gate (sections stateful, identity, "
        "stateless, as blueprints/preview/stateful.yaml); default: blueprints-stateful.yaml in "
        "the current directory when there is one.",
    ),
]


def _check_fail_on(fail_on: list[str] | None) -> None:
    for value in fail_on or []:
        if value not in FAIL_ON:
            raise BadInput(f"--fail-on: must be {' or '.join(FAIL_ON)} (got {value!r})")


def _preview_input(arg: str) -> tuple[str | None, str]:
    """FILE, STACK=FILE or - (stdin) -> (explicit stack or None, path or "-")."""
    stack = None
    path = arg
    if "=" in arg and not Path(arg).exists():
        stack, path = arg.split("=", 1)
        if not stack or not path:
            raise BadInput(f"{arg}: expected FILE or STACK=FILE")
    return stack, path


def _preview_stack_name(explicit: str | None, where: str, preview) -> str:
    if explicit:
        return explicit
    stacks = preview.stacks
    if len(stacks) > 1:
        raise BadInput(
            f"{where}: holds steps of several stacks ({', '.join(stacks)}); "
            "give one preview per stack"
        )
    if stacks:
        return stacks[0]
    name = Path(where).name
    if name.startswith("preview-") and name.endswith(".json") and len(name) > len("preview-.json"):
        return name[len("preview-") : -len(".json")]
    raise BadInput(
        f"{where}: has no steps to read the stack name from; pass it as STACK={where} "
        "or name the file preview-STACK.json"
    )


def _with_stack(message: str, stack: str | None) -> str:
    """The suggested `pulumi preview` command with the stack named, when it is known."""
    from blueprints.preview.document import RUN_PREVIEW

    if not stack:
        return message
    return message.replace(RUN_PREVIEW, RUN_PREVIEW.replace("STACK", stack))


def _run_pulumi_preview(stack: str) -> tuple[str, str]:
    """`pulumi preview --json --show-sames --stack S` -> (where, stdout); stderr passes through."""
    import shutil
    import subprocess

    pulumi = shutil.which("pulumi")
    if pulumi is None:
        raise BadInput(
            f"--stack {stack}: the pulumi CLI is not installed (not on PATH); run "
            f"`pulumi preview --json --stack {stack} > preview-{stack}.json` where it is "
            "and pass the files instead"
        )
    err.print(f"[dim]running pulumi preview --json --stack {escape(stack)}...[/dim]")
    try:
        proc = subprocess.run(
            # --show-sames: unchanged volume attachments name the server holding the data
            # volume; without them a replaced server could not always be recognized as one.
            [pulumi, "preview", "--json", "--show-sames", "--stack", stack],
            stdout=subprocess.PIPE,
            text=True,
            check=False,
        )
    except OSError as exc:
        raise BadInput(f"--stack {stack}: cannot run pulumi ({exc.strerror or exc})") from None
    if proc.returncode != 0 and not proc.stdout.strip():
        raise BadInput(
            f"--stack {stack}: `pulumi preview --json` exited {proc.returncode} without a "
            "preview document; its messages are above"
        )
    return f"pulumi preview --json --stack {stack}", proc.stdout


def _write_atomically(target: Path, text: str) -> None:
    """Write the whole file or leave the old one (or none) in place."""
    if target.is_dir():
        raise BadInput(f"--output {target}: is a directory")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise BadInput(f"--output {target}: directory {parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}-", dir=parent)
    except OSError as exc:
        raise BadInput(f"--output {target}: cannot be written ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@app.command("preview-report")
@_reports_bad_input
def preview_report(
    files: Annotated[
        list[str] | None,
        typer.Argument(
            help="`pulumi preview --json` outputs: FILE, STACK=FILE, or - for stdin. The stack "
            "name comes from the resource URNs, else STACK=, else a preview-STACK.json name. "
            "Pulumi's engine events of a preview (one JSON object per line: --event-log FILE, or "
            "--json with PULUMI_ENABLE_STREAMING_JSON_PREVIEW=true) are read too; anything else "
            "(a stack export, {}, an update's events) is refused.",
            show_default=False,
        ),
    ] = None,
    stack: Annotated[
        list[str] | None,
        typer.Option(
            "--stack",
            "-s",
            help="Run `pulumi preview --json --show-sames --stack S` (needs the pulumi CLI); "
            "repeatable.",
        ),
    ] = None,
    output: ReportOutputOpt = None,
    fail_on: FailOnOpt = None,
    gitlab: GitLabOpt = False,
    no_prices: NoPricesOpt = False,
    stateful: StatefulOpt = None,
) -> None:
    """Turn `pulumi preview --json` documents into one markdown report for a merge request.

    Summary table per stack (with the monthly cost delta), a warning for every stateful resource
    replaced or deleted, then collapsible per-resource property changes; secrets never shown.
    Exit status: 0, 2 bad input, 1 GitLab refused the note; with --fail-on data-loss, 4 data
    loss and 5 a preview that reported errors (what it did not reach is unknown).
    Example: blueprints preview-report prod=preview-prod.json --fail-on data-loss --gitlab
    """
    from blueprints.preview.document import PreviewError, load_preview, read_preview

    _check_fail_on(fail_on)
    if not files and not stack:
        raise BadInput("give preview JSON files (FILE or STACK=FILE) or --stack S")
    documents = []
    # Every input is read before anything is written: one that cannot be read (or is not a
    # preview) stops the command with exit 2, so --fail-on never passes on what it did not see.
    for arg in files or []:
        explicit, path = _preview_input(arg)
        try:
            if path == "-":
                where, preview = "stdin", load_preview("stdin", sys.stdin.read())
            else:
                where, preview = path, load_preview(path)
        except PreviewError as exc:
            raise BadInput(_with_stack(str(exc), explicit)) from None
        documents.append((_preview_stack_name(explicit, where, preview), preview))
    for name in stack or []:
        where, text = _run_pulumi_preview(name)
        try:
            documents.append((name, read_preview(text, where)))
        except PreviewError as exc:
            raise BadInput(_with_stack(str(exc), name)) from None
    _publish_report(documents, None, output, fail_on, gitlab, no_prices, stateful)


def _publish_report(documents, title, output, fail_on, gitlab, no_prices, stateful=None) -> None:
    """Build the report, write or print it, post it to GitLab, apply --fail-on."""
    from blueprints.preview.document import PreviewError
    from blueprints.preview.report import build_report, read_stateful

    seen: set[str] = set()
    for name, _ in documents:
        if name in seen:
            raise BadInput(f"stack {name} is given twice; give one preview per stack")
        seen.add(name)
    try:
        table = read_stateful(stateful)
        report = build_report(documents, prices=not no_prices, title=title, stateful=table)
    except PreviewError as exc:
        raise BadInput(str(exc)) from None

    if output is not None:
        _write_atomically(output, report.markdown)
        err.print(f"[green]wrote[/green] {escape(str(output))}")
    else:
        sys.stdout.write(report.markdown)
        sys.stdout.flush()
    if gitlab:
        from blueprints.preview.gitlab import GitLabError, upsert_note
        from blueprints.preview.report import MARKER

        try:
            result = upsert_note(report.markdown, marker=MARKER)
        except GitLabError as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_FAILED) from None
        err.print(f"[green]{result.action}[/green] note {result.note_id}: {escape(result.url)}")
    if report.data_loss:
        names = ", ".join(f"{d.stack}/{d.name}" for d in report.dangers)
        err.print(f"[yellow]data loss:[/yellow] {escape(names)}", soft_wrap=True)
        if {"data-loss", "review"} & set(fail_on or []):
            raise typer.Exit(EXIT_DATA_LOSS)
    if report.failed:
        names = ", ".join(report.failed)
        err.print(f"[yellow]preview failed:[/yellow] {escape(names)}", soft_wrap=True)
        # What a failed preview did not reach may lose data too: do not pass the gate.
        if {"data-loss", "review"} & set(fail_on or []):
            raise typer.Exit(EXIT_PREVIEW_FAILED)
    # The review level (types the stateful table does not know).
    if report.reviews:
        names = ", ".join(f"{d.stack}/{d.name}" for d in report.reviews)
        err.print(f"[yellow]review:[/yellow] {escape(names)}", soft_wrap=True)
        if "review" in (fail_on or []):
            raise typer.Exit(EXIT_REVIEW)


# --- diff (issue 9, offline preview) ----------------------------------------------------------


@app.command("diff")
@_reports_bad_input
def diff(
    stacks: Annotated[
        list[str] | None,
        typer.Argument(help="Stacks to compare; default: every stack on either side."),
    ] = None,
    base: Annotated[
        str,
        typer.Option(
            "--base",
            help="Git ref to compare the working tree with, e.g. origin/main or HEAD~1.",
            show_default=False,
        ),
    ] = ...,
    output: ReportOutputOpt = None,
    fail_on: FailOnOpt = None,
    gitlab: GitLabOpt = False,
    no_prices: NoPricesOpt = False,
    stateful: StatefulOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Preview offline: plan the stacks at a git ref and in the working tree, report the diff.

    Both sides run under Pulumi's mock runtime (no cloud account, no backend).
    The report is the one preview-report writes, with the same --fail-on and --gitlab.
    Example: blueprints diff --base origin/main --fail-on data-loss
    """
    from blueprints.preview.document import PreviewError, parse_preview
    from blueprints.preview.offline import DiffError, offline_documents

    _check_fail_on(fail_on)
    root = _project(project)
    shown = ", ".join(stacks) if stacks else "all stacks"
    err.print(
        f"[dim]planning {escape(shown)} at {escape(base)} and in the working tree...[/dim]",
        soft_wrap=True,
    )
    try:
        documents = offline_documents(root, base, list(stacks or []))
    except DiffError as exc:
        raise BadInput(str(exc)) from None
    # The documents have the shape of `pulumi preview --json`: the same parser and report.
    try:
        parsed = [
            (stack, parse_preview(document, source=f"offline diff of {stack}"))
            for stack, document in documents
        ]
    except PreviewError as exc:
        raise BadInput(str(exc)) from None
    title = f"Offline diff of the working tree against {base}"
    _publish_report(parsed, title, output, fail_on, gitlab, no_prices, stateful)


@app.command("import")
@_reports_bad_input
def import_(
    compose: Annotated[Path, typer.Argument(help="The docker-compose.yml to import.")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Spec file to write; default app.yaml beside it."),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="App name (a DNS label).")] = None,
    domain: Annotated[
        str | None, typer.Option("--domain", help="Public DNS name the app is served on.")
    ] = None,
    acme_email: Annotated[
        str | None, typer.Option("--acme-email", help="E-mail address for the ACME account.")
    ] = None,
    http: Annotated[
        list[str] | None,
        typer.Option(
            "--http", help="SERVICE:PORT the proxy routes https to (repeatable), or none."
        ),
    ] = None,
    image: Annotated[
        list[str] | None,
        typer.Option("--image", help="SERVICE=IMAGE for a service compose builds (repeatable)."),
    ] = None,
    env_file: Annotated[
        Path | None,
        typer.Option("--env-file", help="Values for compose's ${VAR} (secret names excepted)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output.")] = False,
) -> None:
    """Turn a Docker Compose file into an app spec; print each compose field it dropped or
    guessed, and the secrets to set (values never reach the spec).

    Asks for what compose does not say (domain, e-mail, the http port) on a terminal; elsewhere
    give the flags. Example: blueprints import docker-compose.yml --domain app.example.com
    --acme-email ops@example.com --http web:80
    """
    from blueprints.importer import ImportProblem, Options, import_compose

    target = output if output is not None else compose.parent / "app.yaml"
    if target.exists() and not force:
        raise BadInput(f"{target}: exists; pass --force to replace it")
    if target.exists() and not target.is_file():
        raise BadInput(f"{target}: exists and is not a file")
    if not target.parent.is_dir():
        raise BadInput(f"{target}: directory {target.parent} does not exist")
    ask = (lambda text: typer.prompt(text)) if sys.stdin.isatty() else None
    options = Options(
        output=target,
        name=name,
        domain=domain,
        acme_email=acme_email,
        http=list(http or []),
        images=list(image or []),
        env_file=env_file,
        ask=ask,
    )
    try:
        result = import_compose(compose, options)
    except ImportProblem as exc:
        raise BadInput(str(exc)) from None
    for line in result.notes:
        out.print(line, markup=False, highlight=False, soft_wrap=True)
    try:
        _write_atomically(target, result.text)
    except OSError as exc:
        raise BadInput(f"{target}: cannot be written ({exc.strerror or exc})") from None
    services = ", ".join(result.data["services"])
    out.print(
        f"wrote {target}: app {result.data['name']} ({services})",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    if result.secrets:
        out.print(
            "set these secrets in each stack before `pulumi up` (pulumi asks for the value):",
            markup=False,
            highlight=False,
        )
        for line in result.config_lines():
            out.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)


def main() -> None:
    """Console entry point. Usage errors exit 2 (click's convention), as does bad input."""
    app()


if __name__ == "__main__":
    main()
