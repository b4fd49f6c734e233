"""``minbert claims``: ``docs/CLAIMS.md`` from the claim specs in ``configs/claims/`` (sweep
specs with a ``[claim]`` table) and their sweeps' kept results in ``runs/claims/<spec>/``:
per claim the setting, each arm's paired change against the baseline with its 95% interval,
and the verdict — *holds* when the interval is clear of zero in the claimed direction
(``claim.better``: the claim says the arms score ``higher`` or ``lower`` than the baseline),
*does not hold* when it is clear of zero the other way, *cannot tell at this budget*
otherwise, *not measured yet* without results."""

from __future__ import annotations

from pathlib import Path

from minbert import machine
from minbert.experiments.stats import paired, verdict
from minbert.experiments.sweep import read_results, read_spec
from minbert.run.atomic import write_atomic

VERDICTS = {
    "better": "holds",
    "worse": "does not hold",
    "cannot tell": "cannot tell at this budget",
}


def claims_table(specs: Path, runs: Path, kept: Path | None = None) -> str:
    """The table; each spec's results come from ``runs/<spec>/results`` or, where that is
    missing, from ``kept/<spec>/results`` (the copies ``write_claims`` keeps in the repo)."""
    lines = [
        "# Claims from the reports, re-tested",
        "",
        "Made by `minbert claims` from `configs/claims/*.toml` (one sweep spec each: the claim, "
        "its arms and seeds, its budget) and the results of "
        "`minbert sweep configs/claims/NAME.toml --out runs/claims/NAME` (copies kept in "
        "`docs/claims/NAME/results/`). A change is the "
        "arm's dev metric less the baseline's on the same seed: mean [95% t-interval] over the "
        "paired seeds. Verdict: *holds* when the interval is clear of zero in the claimed "
        "direction, *does not hold* when it is clear of zero the other way, otherwise "
        "*cannot tell at this budget*.",
        "",
        "| claim | setting (budget) | arm vs baseline | metric | seeds | change [95% CI] | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in sorted(specs.glob("*.toml")):
        spec = read_spec(path)
        if not spec.claim:
            continue
        claim, metric = spec.claim, spec.claim["metric"]
        source = runs / path.stem
        if kept is not None and not (source / "results").is_dir():
            source = kept / path.stem
        results = read_results(spec, source)
        scores = {a: {s: r["dev"][metric] for s, r in runs.items()} for a, runs in results.items()}
        text = claim.get("text", path.stem) + (f" ({claim['source']})" if "source" in claim else "")
        setting = f"`{path.name}` ({claim.get('budget', 'see the spec')})"
        kinds = sorted(
            {
                machine.kind_label(r["machine"])
                for rs in results.values()
                for r in rs.values()
                if r.get("machine")
            }
        )
        if kinds:
            setting += "; on " + " / ".join(kinds)
        for i, (arm, against) in enumerate(claim_pairs(spec)):
            change = (
                paired(scores[arm], scores[against]) if scores[arm] and scores[against] else None
            )
            if change is None:
                cell, word, n = "–", "not measured yet", 0
            else:
                n = change.n
                cell = f"{change.mean:+.4f}" + (
                    f" [{change.low:+.4f}, {change.high:+.4f}]" if n >= 2 else " (1 seed)"
                )
                word = (
                    VERDICTS[verdict(change, claim.get("better", "higher"))]
                    if n >= 2
                    else ("cannot tell at this budget")
                )
            first = (text, setting) if i == 0 else ("〃", "")
            lines.append(
                f"| {first[0]} | {first[1]} | `{arm}` vs `{against}` | {metric} | {n} | {cell} | {word} |"
            )
    return "\n".join(lines) + "\n"


def claim_pairs(spec) -> list[tuple[str, str]]:
    """(arm, against) pairs a claim is about: ``claim.compare`` (``["eda", "long"]`` or
    ``"eda"``, against the baseline), else every arm against the baseline."""
    pairs = spec.claim.get("compare") or [a for a in spec.arms if a != spec.baseline]
    return [(p, spec.baseline) if isinstance(p, str) else (p[0], p[1]) for p in pairs]


def write_claims(
    specs: str | Path, runs: str | Path, out: str | Path, kept: str | Path = "docs/claims"
) -> str:
    """Write the table to ``out`` and keep a copy of every result it used in
    ``kept/<spec>/results/`` (small JSON files, committed), so that a fresh clone remakes
    the same table without the run folders."""
    specs, runs, kept = Path(specs), Path(runs), Path(kept)
    table = claims_table(specs, runs, kept)
    for folder in sorted(runs.glob("*/results")) if runs.is_dir() else []:
        if (specs / f"{folder.parent.name}.toml").is_file():
            target = kept / folder.parent.name / "results"
            target.mkdir(parents=True, exist_ok=True)
            for result in sorted(folder.glob("*.json")):
                write_atomic(target / result.name, result.read_text(encoding="utf-8"))
    write_atomic(Path(out), table)
    return table


__all__ = ["claims_table", "write_claims"]
