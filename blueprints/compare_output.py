"""The comparison as a terminal table, Markdown, JSON, HTML, and a chart (SVG or PNG).

All formats show the same figures from one `Comparison`; the chart puts cost, recovery time and
moving parts of each blueprint on one picture. Output is deterministic: same comparison, same
bytes (the chart's SVG ids are salted with a constant and its metadata carries no date).
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
from blueprints.costs import CATEGORIES, backup_storage_lines, money
from blueprints.failure import seconds_text

CHART_SUFFIXES = (".svg", ".png")


def recovery_text(seconds: float | None) -> str:
    return seconds_text(seconds)


def _gib(value: Decimal | None) -> str:
    return "?" if value is None else f"{value.normalize():f} GiB"


def _cost(row: Row) -> str:
    """The monthly total; '(partial)' when something billable could not be priced."""
    total = " + ".join(money(v, c) for c, v in row.cost.total.items()) or "0"
    return total + (" (partial)" if row.cost.unpriced else "")


def summary_rows(comparison: Comparison) -> list[dict[str, str]]:
    """One dict per blueprint, the columns every format shows (in this order)."""
    out = []
    for row in comparison.rows:
        worst = row.failure.worst
        out.append(
            {
                "blueprint": row.label,
                "stack": row.stack,
                "VMs": str(row.vms),
                "vCPU": "?" if row.vcpu is None else str(row.vcpu),
                "RAM": _gib(row.memory_gib),
                "cloud resources": str(row.cloud_resources),
                "per month": _cost(row),
                "moving parts": str(len(row.parts)),
                "config lines": str(row.config_lines),
                "worst VM loss": recovery_text(worst.seconds),
            }
        )
    return out


def cost_rows(comparison: Comparison) -> list[dict[str, str]]:
    out = []
    for row in comparison.rows:
        by = row.cost.by_category()
        cells = {"blueprint": row.label}
        cells.update({c: money(by[c], row.currency) for c in CATEGORIES})
        cells["total"] = _cost(row)
        out.append(cells)
    return out


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
                "vcpu": row.vcpu,
                "memory_gib": None if row.memory_gib is None else str(row.memory_gib),
                "cloud_resources": row.cloud_resources,
                "cost": {
                    "currency": row.currency,
                    "monthly": str(row.monthly),
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
    }


def to_json(comparison: Comparison) -> str:
    return json.dumps(to_data(comparison), indent=2, sort_keys=True) + "\n"


# ---------------------------------------------------------------------------------------------
# Markdown


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(rows: list[dict[str, str]]) -> list[str]:
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
    out += [f"{sub} Moving parts", ""]
    for row in comparison.rows:
        names = ", ".join(f"{p.name} ({p.kind})" for p in row.parts)
        out.append(f"- **{row.label}** ({len(row.parts)}): {names}")
    out += ["", *[f"_{line}_" for line in sources(comparison)]]
    notes = [f"{row.label}: {n}" for row in comparison.rows for n in row.notes]
    notes += [f"{row.label}: not priced: {u}" for row in comparison.rows for u in row.cost.unpriced]
    if notes:
        out += ["", *[f"- {n}" for n in notes]]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# HTML


def _html_table(rows: list[dict[str, str]]) -> str:
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
    """Cost (y) against worst-case recovery (x); bubble area grows with the moving parts."""
    if suffix not in CHART_SUFFIXES:
        raise ValueError(suffix)
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = comparison.rows
    known = [r.failure.worst.seconds for r in rows if r.failure.worst.seconds is not None]
    manual_x = max([*known, 60]) * 1.5 + 30
    with matplotlib.rc_context({"svg.hashsalt": "blueprints", "font.size": 10}):
        fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
        for row in rows:
            seconds = row.failure.worst.seconds
            x = manual_x if seconds is None else seconds
            y = float(row.monthly)
            area = 120 * len(row.parts)
            ax.scatter([x], [y], s=area, alpha=0.35, edgecolors="black")
            vms = f"{row.vms} VM" + ("" if row.vms == 1 else "s")
            if row.spare is None:
                label = f"{row.blueprint}\n{len(row.parts)} moving parts, {vms}"
                ax.annotate(label, (x, y), ha="center", va="center", fontsize=9)
            else:
                # A blueprint shown in two spare modes: the warm one's label left of its bubble,
                # the cold one's right of it, so two bubbles close together stay readable.
                label = f"{row.blueprint}\n{row.spare} spare\n{len(row.parts)} moving parts, {vms}"
                side = -1 if row.spare == "warm" else 1
                ax.annotate(
                    label,
                    (x, y),
                    xytext=(side * ((area / math.pi) ** 0.5 + 4), 0),
                    textcoords="offset points",
                    ha="right" if side < 0 else "left",
                    va="center",
                    fontsize=9,
                )
        boundary = manual_x * 0.87
        ax.axvspan(boundary, manual_x * 1.25, color="grey", alpha=0.12)
        ax.text(manual_x, 0, "needs a person", ha="center", va="bottom", color="dimgrey")
        ax.set_xticks([t for t in ax.get_xticks() if 0 <= t < boundary])
        currency = rows[0].currency if rows else ""
        ax.set_xlabel("app downtime when the worst VM dies (s, estimated)")
        ax.set_ylabel(f"{currency} per month")
        ax.set_xlim(0, manual_x * 1.25)
        top = max([float(r.monthly) for r in rows] + [1.0])
        ax.set_ylim(0, top * 1.3)
        ax.set_title(f"{comparison.app} on {comparison.target}: cost, recovery, moving parts")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        buffer = io.BytesIO()
        if suffix == ".svg":
            fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
        else:
            fig.savefig(buffer, format="png", metadata={"Software": None})
        plt.close(fig)
    return buffer.getvalue()


def write_chart(comparison: Comparison, path: Path) -> None:
    """Write atomically: a failed render leaves no half-written file behind."""
    data = chart_bytes(comparison, path.suffix.lower())
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
