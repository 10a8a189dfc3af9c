"""The comparison as a terminal table, Markdown, JSON, HTML, and a chart (SVG or PNG).

All formats show the same figures from one `Comparison`; the chart puts each blueprint's monthly
cost beside the downtime of every failure scenario. Output is deterministic: same comparison,
same bytes (the chart's SVG ids are salted with a constant and its metadata carries no date).
"""

from __future__ import annotations

import html
import io
import json
import math
from decimal import Decimal
from pathlib import Path
from typing import Any

from blueprints.compare import Comparison, Row
from blueprints.costs import (
    BACKUP_STORAGE_PREFIX,
    CATEGORIES,
    CostLine,
    backup_storage_lines,
    money,
)
from blueprints.failure import seconds_text

CHART_SUFFIXES = (".svg", ".png")


def recovery_text(seconds: float | None) -> str:
    return seconds_text(seconds)


def _gib(value: Decimal | None) -> str:
    return "?" if value is None else f"{value.normalize():f} GiB"


def _partial(row: Row) -> str:
    return " (partial)" if row.cost.unpriced else ""


def _cost(row: Row) -> str:
    """The monthly total without backups; '(partial)' when something billable could not be
    priced."""
    return money(row.monthly, row.currency) + _partial(row)


def backup_kind(line: CostLine) -> str:
    """What a backup cost line is: the bucket's contents, snapshots, or server backups."""
    if line.resource.startswith(BACKUP_STORAGE_PREFIX):
        return "bucket"
    if line.detail.startswith("snapshots"):
        return "snapshots"
    return "server backups"


def backups_text(row: Row, itemized: bool = True) -> str:
    """The row's backups per month, each kind apart ('USD 0.82 bucket + USD 1.13 snapshots'),
    or 'none' when its stack takes none; the same form on every row."""
    kinds: dict[str, Decimal] = {}
    for line in row.backup_lines:
        kinds[backup_kind(line)] = kinds.get(backup_kind(line), Decimal(0)) + line.amount
    if not kinds:
        return "none"
    if not itemized:
        return money(row.backups, row.currency)
    return " + ".join(f"{money(v, row.currency)} {k}" for k, v in sorted(kinds.items()))


def serving_text(row: Row) -> str:
    """How many of the VMs serve the app: '3', or '1 of 2' (a spare), '3 of 6' (k8s)."""
    return str(row.serving) if row.serving == row.vms else f"{row.serving} of {row.vms}"


def summary_rows(comparison: Comparison) -> list[dict[str, str]]:
    """One dict per blueprint, the columns every format shows (in this order). vCPU and RAM
    are those of the VMs serving the app; 'per month' is without backups (their own column)."""
    out = []
    for row in comparison.rows:
        worst = row.failure.worst
        out.append(
            {
                "blueprint": row.label,
                "stack": row.stack,
                "VMs": str(row.vms),
                "serving": serving_text(row),
                "vCPU": "?" if row.vcpu is None else str(row.vcpu),
                "RAM": _gib(row.memory_gib),
                "cloud resources": str(row.cloud_resources),
                "per month": _cost(row),
                "backups": backups_text(row, itemized=False),
                "moving parts": str(len(row.parts)),
                "config lines": str(row.config_lines),
                "worst VM loss": recovery_text(worst.seconds),
            }
        )
    return out


def cost_rows(comparison: Comparison) -> list[dict[str, str]]:
    """Per blueprint: the categories of what runs the app, their sum ('per month'), the
    backups apart (each kind on its own), and the sum with them."""
    out = []
    for row in comparison.rows:
        by = row.cost.by_category()
        cells = {"blueprint": row.label}
        cells.update({c: money(by[c], row.currency) for c in CATEGORIES if c != "backups"})
        cells["per month"] = _cost(row)
        cells["backups"] = backups_text(row)
        cells["with backups"] = money(row.with_backups, row.currency) + _partial(row)
        out.append(cells)
    return out


def capacity_text(row: Row) -> str:
    """The serving machines and what the app needs of them (blueprints/capacity.py)."""
    fit = row.fit
    if fit is None:
        return "not checked"
    if fit.machine is None:
        return fit.summary()
    what = {"single-vm": "the primary", "compose": "the VM", "nomad": "nodes", "k8s": "workers"}
    count = f"{fit.serving} " if fit.serving > 1 else ""
    return f"{count}{what[row.blueprint]} ({fit.machine.describe()}); {fit.summary()}"


def failed_lines(comparison: Comparison) -> list[str]:
    """One line per row that could not be compared: its label, stack and why."""
    return [
        f"{f.label}: not compared: {f.reason}"
        if f.label == f.stack
        else f"{f.label} ({f.stack}): not compared: {f.reason}"
        for f in comparison.failed
    ]


def sources(comparison: Comparison) -> list[str]:
    lines = [
        f"Prices: {t.describe()}." + (f" {t.note}" if t.note else "") for t in comparison.tables
    ]
    # A backup bucket's contents: priced from the table's own object storage block.
    storage = {line.currency for r in comparison.rows for line in backup_storage_lines(r.cost)}
    for t in comparison.tables:
        block = t.data.get("object_storage")
        if t.currency in storage and isinstance(block, dict):
            lines.append(
                f"Backup object storage: {block.get('source')}, {t.currency}, as of "
                f"{block.get('as_of')}; the stored size is an estimate from the spec "
                "(see the notes)."
            )
    lines.append(
        "Backups are apart from 'per month', which prices what runs the app on every row "
        "alike: 'backups' is the stack's own (its bucket's contents, snapshots, server backups), "
        "'none' where its stack sets no backupBucket."
    )
    lines.append(
        "Capacity: vCPU and RAM of the VMs that serve the app; single-vm's spare (warm or cold) "
        "and the k8s control planes do not (blueprints/capacity.py)."
    )
    lines.append(
        "Recovery: estimated from each stack's configured timeouts plus cloud operation "
        "times that are estimates, not measurements (blueprints/failure.py); 'manual' means "
        "a person must act. single-vm is shown with a warm spare (running, without the volume) "
        "and a cold one (powered off), each planned and priced as that mode."
    )
    return lines


# ---------------------------------------------------------------------------------------------
# JSON


def to_data(comparison: Comparison) -> dict[str, Any]:
    def scenario(s) -> dict[str, Any]:
        return {
            "vm_dies": s.dies,
            "automatic": s.automatic,
            "seconds": s.seconds,
            "effect": s.effect,
            "steps": [{"what": st.what, "seconds": st.seconds} for st in s.steps],
        }

    rows = []
    for row in comparison.rows:
        rows.append(
            {
                "blueprint": row.blueprint,
                "spare": row.spare,
                "stack": row.stack,
                "target": row.target,
                "vms": row.vms,
                "serving": row.serving,
                "vcpu": row.vcpu,
                "memory_gib": None if row.memory_gib is None else str(row.memory_gib),
                "capacity": _capacity_data(row),
                "cloud_resources": row.cloud_resources,
                "cost": {
                    "currency": row.currency,
                    "monthly": str(row.monthly),
                    "backups": str(row.backups),
                    "with_backups": str(row.with_backups),
                    "by_category": {k: str(v) for k, v in row.cost.by_category().items()},
                    "lines": [
                        {
                            "resource": line.resource,
                            "category": line.category,
                            "amount": str(line.amount),
                            "detail": line.detail,
                        }
                        for line in row.cost.lines
                    ],
                    "unpriced": list(row.cost.unpriced),
                },
                "moving_parts": [{"kind": p.kind, "name": p.name} for p in row.parts],
                "config": {"files": row.config_files, "lines": row.config_lines},
                "failure": {
                    "detects": row.failure.detects,
                    "recovers": row.failure.recovers,
                    "worst": scenario(row.failure.worst),
                    "scenarios": [scenario(s) for s in row.failure.scenarios],
                    "single_points_of_failure": list(row.failure.single_points),
                },
                "notes": list(row.notes),
            }
        )
    return {
        "app": comparison.app,
        "target": comparison.target,
        "prices": [
            {"cloud": t.cloud, "currency": t.currency, "source": t.source, "as_of": t.as_of}
            for t in comparison.tables
        ],
        "blueprints": rows,
        "failed": [
            {"label": f.label, "stack": f.stack, "reason": f.reason} for f in comparison.failed
        ],
    }


def _capacity_data(row: Row) -> dict[str, Any] | None:
    fit = row.fit
    if fit is None:
        return None
    return {
        "server_type": None if fit.machine is None else fit.machine.type,
        "serving": fit.serving,
        "cpu_needed": None if fit.cpu_needed is None else str(fit.cpu_needed),
        "cpu_offered": None if fit.cpu_offered is None else str(fit.cpu_offered),
        "memory_needed_mib": fit.memory_needed,
        "memory_offered_mib": fit.memory_offered,
        "fits": fit.fits,
        "problems": fit.lines(),
        "not_checked": fit.unknown,
    }


def to_json(comparison: Comparison) -> str:
    return json.dumps(to_data(comparison), indent=2, sort_keys=True) + "\n"


# ---------------------------------------------------------------------------------------------
# Markdown


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(rows: list[dict[str, str]]) -> list[str]:
    if not rows:
        return ["(no stack could be compared)"]
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(_md_cell(r[h]) for h in head) + " |" for r in rows]
    return lines


def to_markdown(comparison: Comparison, level: int = 2) -> str:
    """Markdown whose top heading is at `level` (2: `##`)."""
    h, sub = "#" * level, "#" * (level + 1)
    out = [
        f"{h} {comparison.app}: the four blueprints on {comparison.target}",
        "",
        *_md_table(summary_rows(comparison)),
        "",
        f"{sub} Monthly cost",
        "",
        *_md_table(cost_rows(comparison)),
        "",
        f"{sub} When a VM dies",
        "",
    ]
    for row in comparison.rows:
        f = row.failure
        out += [f"**{row.label}**: detected by {f.detects}; recovered by {f.recovers}.", ""]
        for s in f.scenarios:
            steps = " + ".join(f"{st.what} ({seconds_text(st.seconds)})" for st in s.steps)
            tail = f" = {recovery_text(s.seconds)}" if s.automatic and steps else ""
            how = (steps + tail or "no downtime") if s.automatic else "manual"
            out.append(f"- {s.dies} dies: {how}. {s.effect[:1].upper()}{s.effect[1:]}.")
        out.append(f"- Single points of failure: {', '.join(f.single_points)}.")
        out.append("")
    out += [f"{sub} Capacity", ""]
    out += [f"- **{row.label}**: {capacity_text(row)}" for row in comparison.rows]
    out += ["", f"{sub} Moving parts", ""]
    for row in comparison.rows:
        names = ", ".join(f"{p.name} ({p.kind})" for p in row.parts)
        out.append(f"- **{row.label}** ({len(row.parts)}): {names}")
    if comparison.failed:
        out += ["", f"{sub} Not compared", "", *[f"- {line}" for line in failed_lines(comparison)]]
    out += ["", *[f"_{line}_" for line in sources(comparison)]]
    notes = [f"{row.label}: {n}" for row in comparison.rows for n in row.notes]
    notes += [f"{row.label}: not priced: {u}" for row in comparison.rows for u in row.cost.unpriced]
    if notes:
        out += ["", *[f"- {n}" for n in notes]]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# HTML


def _html_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "<p>No stack could be compared.</p>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r.values()) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(comparison: Comparison) -> str:
    svg = chart_bytes(comparison, ".svg").decode()
    svg = svg[svg.index("<svg") :]  # inline: drop the XML prolog and doctype
    failures = []
    for row in comparison.rows:
        f = row.failure
        items = "".join(
            f"<li>{html.escape(s.dies)} dies: {html.escape(recovery_text(s.seconds))}"
            f" &mdash; {html.escape(s.effect)}</li>"
            for s in f.scenarios
        )
        spofs = html.escape(", ".join(f.single_points))
        failures.append(
            f"<h3>{html.escape(row.label)}</h3><p>Detected by {html.escape(f.detects)}; "
            f"recovered by {html.escape(f.recovers)}.</p><ul>{items}"
            f"<li>Single points of failure: {spofs}</li></ul>"
        )
    failed = "".join(f"<li>{html.escape(line)}</li>" for line in failed_lines(comparison))
    if failed:
        failures.append(f"<h2>Not compared</h2><ul>{failed}</ul>")
    foot = "".join(f"<p><small>{html.escape(line)}</small></p>" for line in sources(comparison))
    title = html.escape(f"{comparison.app}: the four blueprints on {comparison.target}")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title><style>"
        "body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem}"
        "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;"
        "padding:.3rem .6rem;text-align:left}th{background:#f4f4f4}"
        f"</style></head><body><h1>{title}</h1>"
        f"{_html_table(summary_rows(comparison))}<figure>{svg}</figure>"
        f"<h2>Monthly cost</h2>{_html_table(cost_rows(comparison))}"
        f"<h2>When a VM dies</h2>{''.join(failures)}{foot}</body></html>\n"
    )


# ---------------------------------------------------------------------------------------------
# Chart


def chart_bytes(comparison: Comparison, suffix: str) -> bytes:
    """The chart (chart_figure) as SVG or PNG bytes."""
    if suffix not in CHART_SUFFIXES:
        raise ValueError(suffix)
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    with matplotlib.rc_context({"svg.hashsalt": "blueprints", "font.size": 9}):
        fig = chart_figure(comparison)
        buffer = io.BytesIO()
        if suffix == ".svg":
            fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
        else:
            fig.savefig(buffer, format="png", metadata={"Software": None})
        plt.close(fig)
    return buffer.getvalue()


def chart_figure(comparison: Comparison):
    """Two panels sharing one row per blueprint: its monthly cost (without backups), and the
    app's downtime in every failure scenario of its model (one bar each; a scenario that needs
    a person reaches into the shaded "needs a person" band, hatched). Both axes start at 0; the
    legend names each blueprint's colour and the hatching. The caller closes the figure."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    rows = comparison.rows
    known = [s.seconds for r in rows for s in r.failure.scenarios if s.seconds is not None]
    boundary = max([*known, 60]) * 1.15  # where "needs a person" starts
    manual_x = boundary * 1.3  # how far a manual scenario's bar reaches
    colours = plt.get_cmap("tab10").colors
    # One bar per scenario, top to bottom; a gap between blueprints.
    slots: list[tuple[int, Any, float]] = []  # (row index, scenario, position)
    centres: list[float] = []
    y = 0.0
    for i, row in enumerate(rows):
        first = y
        for scenario in row.failure.scenarios:
            slots.append((i, scenario, y))
            y += 1
        centres.append((first + y - 1) / 2)
        y += 0.6
    height = max(4.0, 0.34 * (y + 4))
    with matplotlib.rc_context({"font.size": 9}):
        fig, (cost_ax, time_ax) = plt.subplots(
            1,
            2,
            figsize=(10, height),
            dpi=100,
            sharey=True,
            gridspec_kw={"width_ratios": [1, 2.2]},
        )
        for i, row in enumerate(rows):
            colour = colours[i % len(colours)]
            cost_ax.barh(centres[i], float(row.monthly), height=0.8, color=colour, alpha=0.8)
            cost_ax.text(
                float(row.monthly),
                centres[i],
                f" {money(row.monthly, row.currency)}",
                va="center",
                fontsize=8,
            )
        for i, scenario, pos in slots:
            colour = colours[i % len(colours)]
            seconds = scenario.seconds
            width = manual_x if seconds is None else float(seconds)
            time_ax.barh(
                pos,
                width,
                height=0.8,
                color=colour,
                alpha=0.45 if seconds is None else 0.8,
                hatch="//" if seconds is None else None,
                edgecolor="dimgrey" if seconds is None else colour,
            )
            if seconds == 0:
                # No downtime: a mark on the axis instead of a bar of no length.
                time_ax.plot([0], [pos], marker="D", markersize=5, color=colour, clip_on=False)
            text = f"  {scenario.dies}: {recovery_text(seconds)}"
            time_ax.text(width, pos, text, va="center", fontsize=8)
        labels = [
            f"{row.label}\n{row.vms} VM{'' if row.vms == 1 else 's'}, {len(row.parts)} moving parts"
            for row in rows
        ]
        cost_ax.set_yticks(centres, labels)
        cost_ax.invert_yaxis()
        currency = rows[0].currency if rows else ""
        top = max([float(r.monthly) for r in rows] + [1.0])
        cost_ax.set_xlim(0, top * 1.6)
        cost_ax.xaxis.set_major_locator(MaxNLocator(4))
        cost_ax.set_xlabel(f"{currency} per month, without backups")
        time_ax.axvspan(boundary, manual_x * 1.8, color="grey", alpha=0.12, lw=0)
        time_ax.text(
            boundary,
            0.995,
            "  needs a person",
            ha="left",
            va="top",
            color="dimgrey",
            transform=time_ax.get_xaxis_transform(),
        )
        time_ax.set_xlim(0, manual_x * 1.8)
        ticks = MaxNLocator(5).tick_values(0, boundary)
        time_ax.set_xticks([t for t in ticks if 0 <= t < boundary])
        time_ax.set_xlabel("app downtime when that VM dies (s, estimated)")
        for ax in (cost_ax, time_ax):
            ax.grid(True, axis="x", alpha=0.3)
            ax.set_axisbelow(True)
        handles = [
            Patch(facecolor=colours[i % len(colours)], alpha=0.8, label=row.label)
            for i, row in enumerate(rows)
        ]
        handles.append(
            Patch(facecolor="white", edgecolor="dimgrey", hatch="//", label="needs a person")
        )
        fig.legend(
            handles=handles,
            loc="lower center",
            ncol=min(len(handles), 4),
            fontsize=8,
            frameon=False,
        )
        fig.suptitle(
            f"{comparison.app} on {comparison.target}: cost and downtime per failure scenario"
        )
        rows_of_legend = math.ceil(len(handles) / 4)
        # Room at the bottom for the legend: about 0.2 inch per line of it, and a margin.
        fig.tight_layout(rect=(0, (0.15 + 0.2 * rows_of_legend) / height, 1, 1))
    return fig


def write_chart(comparison: Comparison, path: Path) -> None:
    """Write atomically: a failed render leaves no half-written file behind."""
    data = chart_bytes(comparison, path.suffix.lower())
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
