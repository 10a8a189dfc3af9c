"""The `blueprints` command: plan stacks offline, render what the VMs run, validate a spec."""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import os
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

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
    # No emoji codes: a stack key such as `blueprints:x:` must not print as an emoji.
    console = Console(stderr=stderr, emoji=False)
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


def _jobs(count: int) -> int:
    """Worker processes for `count` independent plans (BLUEPRINTS_JOBS, else one per core)."""
    from blueprints.parallel import JobsError, jobs_wanted

    try:
        return jobs_wanted(count)
    except JobsError as exc:
        raise BadInput(str(exc)) from None


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
            "what the spec must satisfy to run on it; and whether it fits the blueprint's "
            "default server type on each cloud (a warning if not: each stack's own servers are "
            "checked when it is planned).",
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
    services = ", ".join(f"{n} x{s.replicas}" for n, s in app_spec.sorted_services())
    if blueprint is None:
        out.print(f"[green]ok[/green] {escape(str(spec))}: app {app_spec.name} ({services})")
        return
    from blueprints import capacity
    from blueprints.spec import format_path
    from blueprints.stack import blueprint_class

    problems = blueprint_class(blueprint).check(app_spec)
    if problems:
        raise SpecError(
            [f"{spec}: {format_path(path)}: {message} ({blueprint})" for path, message in problems]
        )
    # The capacity check of blueprints/capacity.py on the rung's default server types, with
    # default settings (no plan): a stack with other servers is checked when it is planned.
    fits = capacity.default_fits(app_spec, blueprint)
    servers = ", ".join(
        f"{fit.machine.type if fit.machine else '?'} on {cloud}" for cloud, fit in fits
    )
    short = [(cloud, fit) for cloud, fit in fits if not fit.fits]
    verdict = (
        f"does not fit its default servers ({servers}), see the warnings"
        if short
        else f"fits its default servers ({servers})"
    )
    out.print(
        f"[green]ok[/green] {escape(str(spec))}: app {app_spec.name} ({services}); passes the "
        f"{blueprint} rules; {verdict}; each stack's servers are checked when it is planned"
    )
    for cloud, fit in short:
        for line in fit.lines(str(spec)) or [fit.unknown or ""]:
            err.print(
                f"[yellow]warning:[/yellow] {blueprint} on {cloud}'s default server type: "
                f"{escape(line)}",
                highlight=False,
                soft_wrap=True,
            )
    if short:
        instance = any(p.instance for _, fit in short for p in fit.problems)
        err.print(
            f"a {blueprint} stack plans this spec only with a larger blueprints:serverType"
            + ("" if instance else " (or blueprints:overcommit: true, as only totals are short)"),
            highlight=False,
            soft_wrap=True,
        )


SpecOpt = Annotated[
    Path | None,
    typer.Option(
        "--spec",
        help="Plan this app spec instead of each stack's own (its blueprints:spec).",
        dir_okay=False,
    ),
]


def _spec_file(spec: Path | None) -> Path | None:
    """--spec, checked before anything is planned: a readable, valid app spec (absolute)."""
    if spec is None:
        return None
    if not spec.is_file():
        raise BadInput(f"--spec: {spec} does not exist or is not a file")
    load_spec(spec)  # a bad spec: its own lines naming the field, exit 2
    return spec.resolve()


def _report_unplanned(failed: dict[str, str], total: int) -> None:
    """The stacks that could not be planned, each with why; then exit 2. With several stacks
    each error line starts with its stack's name."""
    if not failed:
        return
    for stack, message in failed.items():
        for line in message.splitlines():
            if total > 1:
                line = f"{stack}: {line.removeprefix(f'stack {stack}: ')}"
            err.print(f"[red]error:[/red] {escape(line)}", highlight=False, soft_wrap=True)
    if total > 1:
        err.print(
            f"{len(failed)} of {total} stacks could not be planned: {', '.join(failed)}",
            highlight=False,
            soft_wrap=True,
        )
    raise typer.Exit(EXIT_BAD_INPUT)


def _print_whole(renderable) -> None:
    """Print a table to stdout. Piped (a CI log, a file), a table wider than the width when its
    longest words are kept whole gets the width it needs: no path is cut or folded."""
    from rich.measure import Measurement

    if out.is_terminal:
        out.print(renderable)
        return
    width = out.width
    needed = Measurement.get(out, out.options.update_width(10_000), renderable).minimum
    if needed <= width:
        out.print(renderable)
        return
    out.width = needed
    try:
        out.print(renderable)
    finally:
        out.width = width


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
    spec: SpecOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Evaluate stacks under Pulumi's mock runtime and show what they would create.

    Each stack is planned on its own: the ones that plan are shown; each one
    that cannot be planned (a rung refusing the spec, a bad stack file) says
    why on stderr, and the exit status is then 2 (--json too).

    Examples: blueprints plan single-vm-hcloud; blueprints plan --all --json;
    blueprints plan --all --spec my-app.yaml
    """
    from blueprints.plan import list_stacks, plan_each

    root = _project(project)
    known = list_stacks(root)
    if all_stacks and stacks:
        raise BadInput("give stack names or --all, not both")
    chosen = list(dict.fromkeys(known if all_stacks else list(stacks or [])))
    if not chosen:
        raise BadInput(f"name a stack or pass --all; stacks here: {', '.join(known) or 'none'}")
    _require_stacks(root, chosen, known)
    spec_path = _spec_file(spec)

    jobs = _jobs(len(chosen))
    if len(chosen) == 1:
        with _progress(f"planning {chosen[0]}"):
            outcome = plan_each(chosen, root, spec=spec_path)
    else:
        with _progress(f"planning {len(chosen)} stacks") as step:
            outcome = plan_each(chosen, root, spec=spec_path, step=step, jobs=jobs)

    if as_json:
        # Always a JSON list, `[]` when no stack planned: a script can parse it either way.
        rows = [r.as_json() for p in outcome.plans for r in p.resources]
        sys.stdout.write(json.dumps(rows, indent=2, sort_keys=True) + "\n")
        sys.stdout.flush()
        _report_unplanned(outcome.failed, len(chosen))
        return
    for p in outcome.plans:
        _show_plan(p)
    if len(chosen) > 1:
        table = Table(title="summary", show_edge=False)
        table.add_column("stack")
        table.add_column("cloud resources", justify="right")
        table.add_column("servers", justify="right")
        planned = {p.stack: p for p in outcome.plans}
        for stack in chosen:
            p = planned.get(stack)
            if p is None:
                table.add_row(escape(stack), "[red]not planned[/red]", "-")
                continue
            servers = sum(1 for r in p.custom if r.type.endswith((":Server", ":Instance")))
            table.add_row(escape(stack), str(len(p.custom)), str(servers))
        _print_whole(table)
    out.file.flush()
    _report_unplanned(outcome.failed, len(chosen))


def _tree_lines(p) -> list[str]:
    """The plan as a tree, one markup line per resource under its parent. Written out line by
    line (not a rich Tree, which crops each line at the width): a long name or type is never
    cut, piped or not."""
    names = {r.name for r in p.resources}
    # A component and a custom resource may share a name: the component is the parent.
    holder = {}
    for r in p.resources:
        if r.name not in holder or not r.custom:
            holder[r.name] = r
    children: dict[str | None, list] = {}
    for r in p.resources:
        parent = r.parent if r.parent in names and holder[r.parent] is not r else None
        children.setdefault(parent, []).append(r)
    lines = [f"[bold]{escape(p.stack)}[/bold]"]
    seen: set[int] = set()

    def walk(parent: str | None, indent: str) -> None:
        kids = sorted(children.get(parent, []), key=lambda r: (r.name, r.type))
        for i, r in enumerate(kids):
            if id(r) in seen:
                continue
            seen.add(id(r))
            last = i == len(kids) - 1
            flags = " [yellow](protected)[/yellow]" if r.protect else ""
            label = f"{escape(r.name)} [dim]{escape(r.type)}[/dim]{flags}"
            lines.append(f"{indent}{'└── ' if last else '├── '}{label}")
            if holder.get(r.name) is r:
                walk(r.name, indent + ("    " if last else "│   "))

    walk(None, "")
    return lines


def _show_plan(p) -> None:
    for line in _tree_lines(p):
        out.print(line, soft_wrap=True, highlight=False)
    counts = Counter(r.type for r in p.custom)
    summary = ", ".join(f"{n} {t.split(':')[-1]}" for t, n in sorted(counts.items()))
    out.print(f"{len(p.custom)} cloud resources: {escape(summary)}", soft_wrap=True)
    for key, value in sorted(p.public_outputs().items()):
        shown = escape(json.dumps(value, sort_keys=True))
        out.print(f"  [cyan]{escape(key)}[/cyan]: {shown}", soft_wrap=True)
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
    spec: SpecOpt = None,
    project: ProjectOpt = None,
) -> None:
    """Write every file the stack's VMs run to disk: each server's bootstrap (its user data and
    each file it installs) and, beside them in release/, the app's release (the document the
    node receives and each file in it).

    Secrets appear as placeholders.

    Examples: blueprints render single-vm-hcloud -o rendered/;
    blueprints render compose-hcloud --spec my-app.yaml
    """
    from blueprints.plan import plan_stack
    from blueprints.render.unpack import stack_files

    root = _project(project)
    _require_stacks(root, [stack])
    spec_path = _spec_file(spec)
    target = output or Path("rendered") / stack
    _check_output_dir(target)
    with _progress(f"planning {stack}"):
        files = stack_files(plan_stack(stack, root, spec=spec_path))
    try:
        _write_tree(target.resolve(), files)
    except OSError as exc:
        raise BadInput(f"{target}: cannot be written ({exc.strerror or exc})") from None
    out.print(
        f"[green]wrote[/green] {len(files)} files to {escape(str(target))}/",
        soft_wrap=True,
        highlight=False,
    )
    for path in sorted(files):
        out.print(f"  {escape(path)}", soft_wrap=True, highlight=False)


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
        typer.Option(
            "--chart",
            help="Also draw each blueprint's cost and the downtime of every failure scenario "
            "(.svg or .png).",
        ),
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
    """Compare the four blueprints for one target: VMs, what serves the app, cost per month
    (backups apart), moving parts, lines of configuration, and what happens when a VM dies.
    Everything is derived from the stacks' offline plans and rendered files. A stack that
    cannot be planned (a rung refusing the spec) is reported with why, the others are still
    compared, and the exit status is then 2.

    Examples: blueprints compare; blueprints compare -t localstack -f markdown --chart ladder.svg
    """
    from blueprints import compare_output
    from blueprints.compare import LADDER, TARGETS, CompareError, hcloud_location
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
    spec = _spec_file(spec)
    tables = dict(shipped_tables())
    root = _project(project)
    token = os.environ.get("HCLOUD_TOKEN")
    if live_prices and target == "hcloud" and not token:
        raise BadInput("--live-prices needs HCLOUD_TOKEN (a read-only Hetzner API token)")
    # Worker processes for the rows (BLUEPRINTS_JOBS, else one per core): 5 rows at most.
    jobs = _jobs(len(LADDER) + 1)
    if live_prices and target != "hcloud":
        err.print(
            f"[yellow]note[/yellow] --live-prices reads Hetzner's prices; {target} "
            "is priced from the shipped AWS table"
        )
    try:
        with _progress(f"comparing the {target} stacks") as step:
            if live_prices and target == "hcloud" and token:
                from blueprints.costs import live_hcloud_table

                step("reading Hetzner's price list")
                location = hcloud_location(root, target)
                tables["hcloud"] = live_hcloud_table(
                    token, os.environ.get("HCLOUD_ENDPOINT"), location=location
                )
            comparison = run_compare(
                target,
                project_dir=root,
                spec=spec,
                tables=tables,
                step=lambda text: step(f"planning {text}"),
                jobs=jobs,
            )
    except (CompareError, PriceError) as exc:
        raise BadInput(str(exc)) from None
    if fmt == "json":
        sys.stdout.write(compare_output.to_json(comparison))
    elif fmt == "markdown":
        sys.stdout.write(compare_output.to_markdown(comparison))
    elif fmt == "html":
        sys.stdout.write(compare_output.to_html(comparison))
    elif comparison.rows:
        _show_comparison(comparison)
    if chart is not None and comparison.rows:
        try:
            compare_output.write_chart(comparison, chart)
        except OSError as exc:
            raise BadInput(f"--chart: {chart} cannot be written ({exc.strerror or exc})") from None
        err.print(f"[green]wrote[/green] {chart}")
    if comparison.failed:
        # Each stack that could not be compared: one line saying why; then exit 2.
        sys.stdout.flush()
        for line in compare_output.failed_lines(comparison):
            err.print(f"[red]error:[/red] {escape(line)}", highlight=False, soft_wrap=True)
        compared = len(comparison.rows) + len(comparison.failed)
        err.print(
            f"{len(comparison.failed)} of {compared} could not be compared",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_BAD_INPUT)


def _show_comparison(comparison) -> None:
    """The comparison's tables, each as a table when it fits the width (COLUMNS, else 80
    piped), else stacked: one block per blueprint, a figure per line, so that no word or
    amount is ever split across lines. Then what happens when a VM dies, the notes, sources."""
    from blueprints.compare_output import capacity_text, cost_rows, sources, summary_rows
    from blueprints.failure import seconds_text

    summary = [{k: v for k, v in r.items() if k != "stack"} for r in summary_rows(comparison)]
    for title, rows in (
        (f"{comparison.app} on {comparison.target}", summary),
        ("monthly cost (backups apart)", cost_rows(comparison)),
    ):
        _print_table_or_blocks(title, rows)
    for row in comparison.rows:
        f = row.failure
        _say(f"{row.label}: {f.detects}; {f.recovers}", style="bold", head=len(row.label) + 1)
        for s in f.scenarios:
            _say(f"{s.dies} dies: {seconds_text(s.seconds)}, {s.effect}", indent="  ")
        _say(f"capacity: {capacity_text(row)}", indent="  ")
    for row in comparison.rows:
        for note in row.notes:
            _say(f"note {row.label}: {note}", style="yellow", head=4)
        for line in row.cost.unpriced:
            _say(f"not priced {row.label}: {line}", style="yellow", head=10)
    for line in sources(comparison):
        _say(line, style="dim")


# An amount in the comparison's prose, kept on one line when it is wrapped: money, durations,
# sizes, counts ('EUR 10.90', '73.2 s', '4096 MiB', '2.75 cores', '3 of 6', '2 x 512').
_NUMBER, _UNIT = r"\d+(?:\.\d+)?", r"(?:s|GiB|MiB|GB|cores?|vCPU)\b"
_AMOUNT = re.compile(
    rf"(?:EUR|USD) {_NUMBER}|{_NUMBER} (?:of|x) {_NUMBER}(?: {_UNIT})?|{_NUMBER} {_UNIT}"
)


def _say(text: str, indent: str = "", style: str | None = None, head: int = 0) -> None:
    """One line of prose on stdout: whole when piped (a CI log keeps lines whole); on a
    terminal wrapped at spaces to its width, continuation lines indented two more, never
    inside a word or an amount. `style` colours the first `head` characters (all if 0)."""
    lines = [indent + text] if out.soft_wrap else _wrap(text, out.width, indent)
    for i, line in enumerate(lines):
        if style is None:
            markup = escape(line)
        elif i == 0 and head:
            cut = len(indent) + head
            markup = f"[{style}]{escape(line[:cut])}[/{style}]{escape(line[cut:])}"
        else:
            markup = f"[{style}]{escape(line)}[/{style}]" if not head else escape(line)
        out.print(markup, highlight=False, soft_wrap=True)


def _wrap(text: str, width: int, indent: str) -> list[str]:
    glue = "\0"
    words = _AMOUNT.sub(lambda m: m.group(0).replace(" ", glue), text).split(" ")
    lines: list[str] = []
    line = indent
    for word in words:
        word = word.replace(glue, " ")
        start = line.strip() == ""
        if not start and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = indent + "  " + word
        else:
            line = line + word if start else f"{line} {word}"
    lines.append(line)
    return lines


def _print_table_or_blocks(title: str, rows: list[dict[str, str]]) -> None:
    """rows (dicts of the same keys, the first one naming the row) as a table whose cells never
    wrap, when it fits the console's width; else one block per row, `key  value` per line."""
    from rich.measure import Measurement

    table = Table(title=title, show_edge=False)
    for i, head in enumerate(rows[0]):
        table.add_column(head, justify="left" if i == 0 else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(escape(v) for v in row.values()))
    width = Measurement.get(out, out.options.update_width(10_000), table).maximum
    if width <= out.width:
        out.print(table)
        return
    out.print(f"[italic]{escape(title)}[/italic]")
    name, *keys = list(rows[0])
    pad = max(len(key) for key in keys)
    for row in rows:
        out.print(f"[bold]{escape(row[name])}[/bold]")
        for key in keys:
            out.print(f"  [dim]{escape(key.ljust(pad))}[/dim]  {escape(row[key])}", highlight=False)


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
    spec: Annotated[
        Path | None,
        typer.Option(
            "--spec",
            help="Your own app spec, baked as written instead of the example (validated "
            "first; the files its services read come along). Its name, domain and e-mail are "
            "the project's: an option saying otherwise is an error.",
            dir_okay=False,
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

    Without --no-input it asks each answer (options become the suggested ones) and checks it
    right away: a bad one is said in one line and asked again. All of the project is written,
    or none of it. It carries the wheel of this blueprints (vendor/), so it installs offline.
    Examples:

    blueprints new shop-infra --no-input --blueprint all --domain shop.example.org

    blueprints new my-infra --spec my-app.yaml --no-input --target hcloud
    """
    from blueprints.vendoring import VendorError

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

    asked: list[str] = []

    def ask(question: scaffold.Question) -> str:
        if not asked and spec is not None:  # once, before the first question
            app_spec = load_spec(spec)
            admin = app_spec.admin
            out.print(
                f"from {escape(str(spec))}: app {app_spec.name}, domain {app_spec.domain}, "
                f"ACME e-mail {escape(app_spec.acme_email)}"
                + (f", {len(admin.ssh_keys)} admin SSH key(s)" if admin.ssh_keys else "")
                + (f", admin networks {', '.join(admin.cidrs)}" if admin.cidrs else ""),
                highlight=False,
                soft_wrap=True,
            )
        asked.append(question.key)
        return typer.prompt(question.text, default=question.default)

    def complain(message: str) -> None:
        err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)

    try:
        # Progress starts with the first slow step, after every check and question.
        with contextlib.ExitStack() as stack:
            steps: list = []

            def step(text: str) -> None:
                if not steps:
                    steps.append(stack.enter_context(_progress("baking the project")))
                steps[0](text)

            path = scaffold.bake(
                directory,
                given,
                spec=spec,
                ask=None if no_input else ask,
                complain=complain,
                step=step,
            )
    except scaffold.ScaffoldError as exc:
        raise BadInput(str(exc)) from None
    except scaffold.AnswersRefused:
        raise typer.Exit(EXIT_BAD_INPUT) from None  # the template's hook printed why
    except VendorError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_FAILED) from None
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

    # It runs for months: reclaim what each probe leaves behind (main() turned this off).
    gc.enable()
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
    _print_whole(table)  # piped: a long path stays whole
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
        f"would be replaced or deleted, and {EXIT_PREVIEW_FAILED} when that is unknown (a "
        "preview reported errors; diff: a stack whose base could not be planned). review: that "
        f"too, and exit {EXIT_REVIEW} when a resource of a type not known "
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


def _publish_report(
    documents,
    title,
    output,
    fail_on,
    gitlab,
    no_prices,
    stateful=None,
    unplanned=None,
    against_nothing=None,
) -> None:
    """Build the report, write or print it, post it to GitLab, apply --fail-on.

    `unplanned` (diff): stack -> [(where, why)] for the stacks that could not be planned in the
    working tree; their documents are failed previews. They are listed on stderr and the exit
    status is 2, unless --fail-on finds data loss in the stacks that planned (4).
    `against_nothing` (diff): stack -> (base's label, why) for the stacks that could not be
    planned at the base only; their documents show them against nothing. A warning on stderr;
    what they replace or delete is unknown, so --fail-on exits 5 as for a failed preview."""
    from blueprints.preview.document import PreviewError
    from blueprints.preview.report import build_report, read_stateful

    seen: set[str] = set()
    for name, _ in documents:
        if name in seen:
            raise BadInput(f"stack {name} is given twice; give one preview per stack")
        seen.add(name)
    try:
        table = read_stateful(stateful)
        report = build_report(
            documents,
            prices=not no_prices,
            title=title,
            stateful=table,
            against_nothing={s: label for s, (label, _) in (against_nothing or {}).items()},
        )
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
    from blueprints.preview.offline import where

    for stack, reasons in (unplanned or {}).items():
        for label, message in reasons:
            for line in message.splitlines():
                err.print(
                    f"[red]error:[/red] {escape(f'{stack} ({where(label)}): {line}')}",
                    highlight=False,
                    soft_wrap=True,
                )
    for stack, (label, message) in (against_nothing or {}).items():
        why = " ".join(line.strip() for line in message.splitlines() if line.strip())
        err.print(
            "[yellow]warning:[/yellow] "
            + escape(f"{stack} could not be planned {where(label)}: {why}; shown against nothing"),
            highlight=False,
            soft_wrap=True,
        )
    if report.data_loss:
        names = ", ".join(f"{d.stack}/{d.name}" for d in report.dangers)
        err.print(f"[yellow]data loss:[/yellow] {escape(names)}", soft_wrap=True)
        if {"data-loss", "review"} & set(fail_on or []):
            raise typer.Exit(EXIT_DATA_LOSS)
    if unplanned:
        err.print(
            f"{len(unplanned)} of {len(documents)} stacks could not be planned and were not "
            f"diffed: {', '.join(unplanned)}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_BAD_INPUT)
    if report.failed:
        names = ", ".join(report.failed)
        err.print(f"[yellow]preview failed:[/yellow] {escape(names)}", soft_wrap=True)
    if report.against_nothing:
        names = ", ".join(report.against_nothing)
        err.print(
            f"[yellow]data loss unknown:[/yellow] {escape(names)}: not planned at the base, so "
            "what this change replaces or deletes where it runs cannot be checked offline; "
            "check it with `pulumi preview` of the deployed stack",
            highlight=False,
            soft_wrap=True,
        )
    # What a failed preview did not reach may lose data too, and so may a stack shown against
    # nothing: do not pass the gate.
    if (report.failed or report.against_nothing) and {"data-loss", "review"} & set(fail_on or []):
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
    spec: Annotated[
        Path | None,
        typer.Option(
            "--spec",
            help="Plan the working tree's stacks with this app spec instead of each one's own "
            "(what would my spec change?); the base is planned as it was at the ref, with the "
            "spec its stacks named there.",
            dir_okay=False,
        ),
    ] = None,
    project: ProjectOpt = None,
) -> None:
    """Preview offline: plan the stacks at a git ref and in the working tree, report the diff.

    Both sides run under Pulumi's mock runtime (no cloud account, no backend).
    The report is the one preview-report writes, with the same --fail-on and
    --gitlab.

    Each stack is planned on its own. One that cannot be planned in the
    working tree is a failed preview in the report, with why, and listed on
    stderr; the others are diffed. The exit status is then 2 once the report
    is written (4 when --fail-on finds data loss in the others). One that
    cannot be planned only at the base (this change may fix it) is shown
    against nothing, every resource as created, with a warning: exit 0, but 5
    with --fail-on, as what it replaces or deletes is unknown.

    Examples: blueprints diff --base origin/main --fail-on data-loss;
    blueprints diff --base HEAD --spec my-app.yaml
    """
    from blueprints.preview.document import PreviewError, parse_preview
    from blueprints.preview.offline import DiffError, offline_diff, where

    _check_fail_on(fail_on)
    root = _project(project)
    spec_path = _spec_file(spec)
    shown = ", ".join(stacks) if stacks else "all stacks"
    try:
        with _progress(f"planning {shown} at {base} and in the working tree") as step:
            result = offline_diff(
                root,
                base,
                list(stacks or []),
                spec=spec_path,
                progress=lambda label, stack: step(f"{stack} {where(label)}"),
            )
    except DiffError as exc:
        raise BadInput(str(exc)) from None
    # The documents have the shape of `pulumi preview --json`: the same parser and report.
    try:
        parsed = [
            (stack, parse_preview(document, source=f"offline diff of {stack}"))
            for stack, document in result.documents
        ]
    except PreviewError as exc:
        raise BadInput(str(exc)) from None
    title = f"Offline diff of the working tree against {base}"
    if spec_path is not None:
        title += f", the working tree planned with {spec.name}"
    _publish_report(
        parsed,
        title,
        output,
        fail_on,
        gitlab,
        no_prices,
        stateful,
        unplanned=result.failed,
        against_nothing=result.against_nothing,
    )


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
    # A command is a batch of seconds that builds large object graphs (imported provider SDKs,
    # Pulumi's resources and futures, rendered documents) and keeps nearly all of them until it
    # exits: the cyclic collector's passes were a quarter of `plan --all` and freed little (a
    # 2,000-service plan peaks 5% higher without them). `watch`, which runs for months, turns
    # it back on.
    gc.disable()
    app()


if __name__ == "__main__":
    main()
