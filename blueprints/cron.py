"""Cron schedules of the spec: checked, normalised, and turned into systemd calendar events.

The spec's `schedules[].cron` is five cron fields in UTC (minute, hour, day of month, month, day
of week) or one of @hourly, @daily, @weekly, @monthly. Nomad (`periodic.crons`) and Kubernetes
(`CronJob.spec.schedule`) read the normalised text as it is; the VM rungs run a systemd timer
whose `OnCalendar=` comes from `on_calendar`.

One cron rule has no calendar-event equivalent: when both day of month and day of week are
restricted, cron runs on either (an OR), systemd on both (an AND). Such a schedule is refused
with a sentence saying so, rather than rendered to mean something else on one rung.
"""

from __future__ import annotations

import re

__all__ = ["CronError", "normalise", "on_calendar"]

MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
}
FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
)
MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
SYSTEMD_DAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_PART = re.compile(r"^(\*|[0-9a-z]+(?:-[0-9a-z]+)?)(?:/([0-9]+))?\Z")


class CronError(ValueError):
    """A cron text that cannot be used; the message is one sentence."""


def _number(text: str, index: int) -> int:
    name, low, high = FIELDS[index]
    names = MONTHS if index == 3 else DAYS if index == 4 else []
    if text in names:
        return names.index(text) + (1 if index == 3 else 0)
    if not text.isdigit():
        raise CronError(f"the {name} field has {text!r}, which is not a number")
    value = int(text)
    if not low <= value <= high:
        raise CronError(f"the {name} field has {value}, outside {low}-{high}")
    return value


def _parse_field(text: str, index: int) -> list[tuple[int, int, int | None, bool]]:
    """(first, last, step, star) per comma-separated part; numbers checked against the range."""
    name, low, high = FIELDS[index]
    parts = []
    for part in text.split(","):
        m = _PART.match(part)
        if not m:
            raise CronError(f"the {name} field has {part!r}; use *, a number, a-b, a list or */n")
        body, step = m.group(1), m.group(2)
        if body == "*":
            first, last, star = low, high if index != 4 else 6, True
        elif "-" in body:
            a, b = body.split("-")
            first, last, star = _number(a, index), _number(b, index), False
            if first > last:
                raise CronError(f"the {name} field's range {body} runs backwards")
        else:
            first = last = _number(body, index)
            star = False
            if step is not None:
                last = high if index != 4 else 6
        if step is not None and not 1 <= int(step) <= high:
            raise CronError(f"the {name} field's step /{step} is outside 1-{high}")
        parts.append((first, last, int(step) if step is not None else None, star))
    return parts


def normalise(text: str) -> str:
    """The schedule as five fields of numbers separated by single spaces; CronError if not one."""
    words = text.strip().lower().split()
    if len(words) == 1 and words[0] in MACROS:
        words = MACROS[words[0]].split()
    if len(words) != 5:
        raise CronError(
            f"must be five cron fields (minute hour day-of-month month day-of-week, like "
            f"*/5 * * * *) or one of {', '.join(m for m in MACROS if m != '@midnight')} "
            f"(got {text!r})"
        )
    for index, word in enumerate(words):
        _parse_field(word, index)
        if index >= 3:  # names as numbers, which every reader of cron text takes
            words[index] = re.sub(r"[a-z]+", lambda m, at=index: str(_number(m.group(0), at)), word)
    if any(7 in (first, last) for first, last, _, _ in _parse_field(words[4], 4)):
        # Sunday as 7 is cron's, not every reader's (Kubernetes' CronJob takes 0-6 only)
        days = sorted(
            {
                v % 7
                for first, last, step, _ in _parse_field(words[4], 4)
                for v in range(first, last + 1, step or 1)
            }
        )
        words[4] = "*" if len(days) == 7 and words[2] == "*" else ",".join(map(str, days))
    if words[2] != "*" and words[4] != "*":
        raise CronError(
            "restricts both the day of month and the day of week, which cron reads as either "
            "and a systemd timer as both; keep one of them *"
        )
    return " ".join(words)


def _calendar_field(text: str, index: int, width: int = 2) -> str:
    out = []
    for first, last, step, star in _parse_field(text, index):
        if star and step is None:
            return "*"
        if step is not None:
            # first/step up to the field's end is what systemd's a/b means; bounded ranges list
            high = FIELDS[index][2]
            end = high if index != 4 else 6
            if last == end:
                out.append(f"{first:0{width}d}/{step}")
                continue
            out.extend(f"{v:0{width}d}" for v in range(first, last + 1, step))
        elif first == last:
            out.append(f"{first:0{width}d}")
        else:
            out.append(f"{first:0{width}d}..{last:0{width}d}")
    return ",".join(out)


def _calendar_days(text: str) -> str:
    if text == "*":
        return ""
    days: set[int] = set()
    for first, last, step, _ in _parse_field(text, 4):
        days.update(v % 7 for v in range(first, last + 1, step or 1))
    return ",".join(SYSTEMD_DAYS[d] for d in sorted(days)) + " "


def on_calendar(text: str) -> str:
    """A systemd OnCalendar= expression firing when the cron schedule does (UTC)."""
    minute, hour, dom, month, dow = normalise(text).split()
    date = f"*-{_calendar_field(month, 3)}-{_calendar_field(dom, 2)}"
    clock = f"{_calendar_field(hour, 1)}:{_calendar_field(minute, 0)}:00"
    return f"{_calendar_days(dow)}{date} {clock} UTC"
