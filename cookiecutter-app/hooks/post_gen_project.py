"""Cookiecutter post-generation hook: write the files that depend on the answers.

The app spec (the example with the answers applied, or the team's own spec `_spec` as written),
the wheel of blueprints in vendor/ (`_wheel`, as `blueprints new` built it, or built here),
Pulumi.yaml, pyproject.toml, one stack file per chosen blueprint x target and .gitlab-ci.yml come
from blueprints.scaffold.write_project, through serializers; nothing the answers did not choose
is ever written. A failure here makes cookiecutter remove the whole project directory.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(answers: dict, project_dir: Path) -> int:
    from blueprints.scaffold import ScaffoldError, validate_answers, write_project
    from blueprints.spec import SpecError
    from blueprints.vendoring import VendorError

    wheel = Path(answers["_wheel"]) if answers.get("_wheel") else None
    try:
        valid = validate_answers(answers, base=key_base(answers))  # fmt: skip
        write_project(project_dir, valid, wheel)
    except (ScaffoldError, SpecError, VendorError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # anything else: still one line, not a traceback
        what = " ".join(str(exc).split()) or "no message"
        print(
            f"error: writing the project failed ({exc.__class__.__name__}: {what}); nothing "
            "was kept",
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
    sys.exit(main(json.loads(r'''{{ cookiecutter | tojson }}'''), Path.cwd()))  # fmt: skip
