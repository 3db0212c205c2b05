"""`python -m analysis.report`: read a study storage, write report.md, report.html, trials.csv/.parquet.

    python -m analysis.report --storage sqlite:///sweeps.db                  # every study -> reports/all
    python -m analysis.report --storage sqlite:///sweeps.db --study sst2-small-lora --out reports/sst2

report.md links the PNGs in `figures/` beside it; report.html embeds them and stands alone. The answer (verdicts and
what LoRA saves) also becomes each study's note in optuna-dashboard, and the figures and trial files its artifacts
(`analysis.dashboard`; `--no-dashboard` to skip). The last lines printed are the dashboard command.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import optuna

from analysis import answer, dashboard
from analysis.dashboard import default_artifact_dir
from analysis.load import ReportInputError, export, load_studies, open_storage, redact, trials_frame
from analysis.sections import FIGURES, Sections
from analysis.verdicts import Margin, unpaired_groups

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.report",
        description="Where does LoRA match full fine-tuning, and what does it save? A report from Optuna studies.",
    )
    parser.add_argument("--storage", required=True, help="study storage URL, e.g. sqlite:///sweeps.db")
    parser.add_argument("--study", action="append", default=[], help="a study name (repeatable; default: all)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: reports/<study or all>)")
    parser.add_argument(
        "--margin-points",
        type=float,
        default=Margin.points,
        help="'matches' margin for objectives on a 0-1 scale (accuracy, macro-F1, ROUGE-L); 0.01 = 1 point",
    )
    parser.add_argument(
        "--margin-relative",
        type=float,
        default=Margin.relative,
        help="'matches' margin for other objectives, as a fraction of full fine-tuning's value (0.02 = 2%%)",
    )
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=None,
        help="artifact folder for optuna-dashboard's --artifact-dir (default: <database stem>-artifacts/ beside a "
        "SQLite file; required for a server database)",
    )
    parser.add_argument(
        "--no-dashboard",
        action="store_true",
        help="write only the report files: no study note, no artifacts",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines, only the final summary")
    args = parser.parse_args(argv)
    for name in ("margin_points", "margin_relative"):
        value = getattr(args, name)
        if not value >= 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0, but got --{name.replace('_', '-')}={value}")
    return args


def write_report(
    storage_url: str, study_names: list[str], out: Path, margin: Margin | None = None
) -> dict[str, object]:
    """Build every output of the report in `out`; returns what was written (paths and counts).

    Raises:
        ReportInputError: the storage cannot be opened or a study name is not in it.
    """
    storage = open_storage(storage_url)
    studies = load_studies(storage, study_names)
    logger.info("reading %d studies from %s", len(studies), redact(storage_url))
    df = trials_frame(studies)
    out.mkdir(parents=True, exist_ok=True)
    data = export(df, out)
    title = "LoRA vs full fine-tuning: " + (", ".join(study_names) if study_names else "all studies")
    sections = Sections(df, studies, out, title, margin)
    doc = sections.build()
    doc.paragraph(f"Source: {redact(storage_url)}. Trial data: trials.csv, trials.parquet (one row per trial).")
    markdown, page = out / "report.md", out / "report.html"
    markdown.write_text(doc.to_markdown(), encoding="utf-8")
    page.write_text(doc.to_html(out), encoding="utf-8")
    return {
        "markdown": markdown,
        "html": page,
        "data": data,
        "figures": [out / p for p in doc.images()],
        "n_trials": len(df),
        "n_studies": len(studies),
        "sections": sections,
        "studies": studies,
    }


def update_dashboard(written: dict[str, object], storage_url: str, artifacts: Path | None) -> list[str]:
    """Write each study's note and (with an artifact folder) its files; returns the lines to print."""
    sections: Sections = written["sections"]  # type: ignore[assignment]
    store = artifacts or default_artifact_dir(storage_url)
    unpaired = [answer.unpaired_line(*g) for g in unpaired_groups(sections.df)]
    counts = {"artifacts": 0, "trials": 0}
    for study in written["studies"]:  # type: ignore[attr-defined]
        name = study.study_name
        mine = [v for v in sections.verdicts if any(t.rsplit("#", 1)[0] == name for t in (v.lora.trial, v.full.trial))]
        note = answer.note_markdown(sections.scope(), mine, unpaired, str(written["html"]))
        figures = [Path(str(written["html"]))]
        figures += [sections.folder / rel for rel, owners in sections.owners.items() if name in owners]
        answers = {f"{v.task} · {v.model}": answer.short_answer(v) for v in mine}
        for key, value in dashboard.publish(study, note, figures, store, answers).items():
            counts[key] += value
    shown = redact(storage_url)
    n, trials = counts["artifacts"], counts["trials"]
    lines = [
        f"Dashboard: the answer is on each study's page and in its note; {n} artifact{'s' * (n != 1)} "
        f"({trials} trial{'s' * (trials != 1)})"
    ]
    if store is None:
        lines[0] = "Dashboard: the answer is on each study's page and in its note; no artifacts were uploaded"
        lines.append(
            f"  a {shown.split(':', 1)[0]} storage has no folder beside it: pass --artifacts DIR to attach them"
        )
        lines.append(f"  optuna-dashboard {shown}")
    else:
        lines[0] += f" in {store}/"
        lines.append(f"  optuna-dashboard {shown} --artifact-dir {store}")
    return lines


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = args.out or Path("reports") / ("_".join(args.study) if args.study else "all")
    try:
        margin = Margin(points=args.margin_points, relative=args.margin_relative)
        written = write_report(args.storage, args.study, out, margin)
    except ReportInputError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(
        f"Report of {written['n_trials']} trials from {written['n_studies']} studies written to {out}/\n"
        f"  report.md    (links {len(written['figures'])} PNGs in {out / FIGURES}/)\n"
        f"  report.html  (self-contained, images embedded)\n"
        f"  trials.csv, trials.parquet (one row per trial)"
    )
    if not args.no_dashboard:
        try:
            lines = update_dashboard(written, args.storage, args.artifacts)
        except Exception as exc:  # the storage refused a write: the report files stand, say so in one line
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SystemExit(
                f"error: the report is written to {out}/, but the study note and artifacts could not be written "
                f"({type(exc).__name__}: {reason}); pass --no-dashboard to write only the report"
            ) from None
        print("\n".join(lines))
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
