"""``grpo-audio check-data``: vet a manifest before a long run, one line per row."""

from __future__ import annotations

from pathlib import Path

from ..models import get_family
from .schema import audio_limit, validate_rows


def check_manifest(
    manifest: str | Path, family: str | None = None, long_audio: str = "truncate", max_seconds: float | None = None
) -> int:
    """Validate every row of ``manifest`` and print a per-row report. Returns the exit status (1 if any bad)."""
    from .loaders import read_manifest

    fam = get_family(family) if family else None
    rows, bad = read_manifest(manifest)
    report = validate_rows(rows, fam, max_audio_seconds=max_seconds, long_audio=long_audio)
    problems: dict[str, list[str]] = {}
    for b in bad + report.bad:
        problems.setdefault(b.id, []).append(f"{b.field}: {b.reason}")
    truncated = set(report.truncated)
    limit = audio_limit(fam, max_seconds)
    ids = [b.id for b in bad] + [r.id for r in rows]
    for rid in dict.fromkeys(ids):
        if rid in problems:
            print(f"BAD  {rid}: " + "; ".join(problems[rid]))
        else:
            note = f"  (truncated to {limit:g} s)" if rid in truncated else ""
            print(f"ok   {rid}: {report.seconds[rid]:.1f} s{note}")
    n_bad = len(problems)
    print(
        f"{len(ids)} rows: {len(ids) - n_bad} ok, {n_bad} bad, {len(truncated)} truncated"
        + (f" (limit {limit:g} s)" if limit else "")
    )
    return 1 if n_bad else 0
