"""Cookiecutter pre-generation hook: refuse a bad answer with one sentence, before any file of
the project is written (cookiecutter then removes the project directory it created).

The checks are blueprints.scaffold's, shared with `blueprints new` (which asks and checks each
answer at its prompt, then bakes without prompting); this file only hands them the answers, and
`_spec`, the path of the team's own app spec when one is baked instead of the example.
Cookiecutter runs it with its own Python, so blueprints must be installed there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(answers: dict) -> int:
    try:
        from blueprints.scaffold import ScaffoldError, validate_answers
        from blueprints.spec import SpecError
    except ImportError:
        print(
            f"error: the blueprints package is not installed for {sys.executable}; install it "
            "where cookiecutter runs (pip install <a blueprints checkout or its wheel>)",
            file=sys.stderr,
        )
        return 1
    try:
        validate_answers(answers, base=key_base(answers))  # fmt: skip
    except (ScaffoldError, SpecError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # anything else: still one line, not a traceback
        what = " ".join(str(exc).split()) or "no message"
        print(
            f"error: checking the answers failed ({exc.__class__.__name__}: {what})",
            file=sys.stderr,
        )
        return 1
    return 0


def key_base(answers: dict) -> Path:
    """Where a relative SSH key path is read from: the directory `blueprints new` ran in, else
    the directory cookiecutter bakes into (its --output-dir, by default where it runs)."""
    return Path(answers.get("_cwd") or answers.get("_output_dir") or ".")


if __name__ == "__main__":
    # tojson escapes ' (as \u0027), so the answers cannot end this raw string early.
    sys.exit(main(json.loads(r'''{{ cookiecutter | tojson }}''')))  # fmt: skip
