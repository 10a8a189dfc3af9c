"""Golden files: a rendered set of files compared byte for byte with its copy under
tests/golden/, rewritten only by `pytest --update-golden` (review the diff before committing)."""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path


def check_golden(base: Path, rendered: Mapping[str, str], update: bool) -> None:
    """`rendered` maps paths relative to `base` to texts; the directory must hold exactly those."""
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
