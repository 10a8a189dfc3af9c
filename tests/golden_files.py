"""Golden files: a rendered set of files compared byte for byte with its copy under
tests/golden/, rewritten only by `pytest --update-golden` (review the diff before committing)."""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

# Programs shipped verbatim from this repository's source (blueprints-backup is
# blueprints/backup/node_backup.py with node_kit inlined): a golden copy would only repeat the
# source, so golden sets hold this line in their place, in a release document too.
SHIPPED = "(shipped from blueprints/backup/node_backup.py; tested in tests/test_node_backup.py)\n"


def without_shipped_programs(rendered: Mapping[str, str]) -> dict[str, str]:
    """`rendered` with each shipped program's text, and its copy in a release document
    (release.yaml), replaced by SHIPPED."""
    from blueprints.backup import backup_source
    from blueprints.release.bundle import dump, release_id

    shipped = backup_source()
    out = {rel: SHIPPED if text == shipped else text for rel, text in rendered.items()}
    if "release.yaml" in out:
        import yaml

        body = yaml.safe_load(out["release.yaml"])
        entries = [e for e in (body.get("files") or {}).values() if e.get("text") == shipped]
        for entry in entries:
            entry["text"] = SHIPPED
        if entries:  # (its id recomputed: a golden release document is still a valid one)
            body["release"] = release_id(body)
            out["release.yaml"] = dump(body)
    return out


def check_golden(base: Path, rendered: Mapping[str, str], update: bool) -> None:
    """`rendered` maps paths relative to `base` to texts; the directory must hold exactly those
    (shipped programs stand in as one line, see without_shipped_programs)."""
    rendered = without_shipped_programs(rendered)
    if update:
        shutil.rmtree(base, ignore_errors=True)
        for rel, text in rendered.items():
            target = base / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(text.encode())
    assert base.is_dir(), "no golden files yet; run pytest --update-golden"
    on_disk = {str(p.relative_to(base)): p for p in base.rglob("*") if p.is_file()}
    assert sorted(on_disk) == sorted(rendered), "file list changed; pytest --update-golden"
    for rel, text in rendered.items():
        assert on_disk[rel].read_bytes() == text.encode(), (
            f"{rel} differs from its golden file; review, then pytest --update-golden"
        )


def check_no_stale_sets(stale: Iterable[Path], update: bool) -> None:
    """Golden sets nothing renders any more: removed by --update-golden, a failure otherwise."""
    stale = sorted(stale)
    if update:
        for path in stale:
            shutil.rmtree(path)
        stale = []
    assert not stale, f"golden files no longer rendered: {stale}; pytest --update-golden"
