"""`python -m analysis.report`: read a study storage, write report.md, report.html, trials.csv/.parquet.

    python -m analysis.report --storage sqlite:///sweeps.db                  # every study -> reports/all
    python -m analysis.report --storage sqlite:///sweeps.db --study sst2-small-lora --out reports/sst2

report.md links the PNGs in `figures/` beside it; report.html embeds them and stands alone.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import optuna

from analysis.load import ReportInputError, export, load_studies, open_storage, redact, trials_frame
from analysis.sections import FIGURES, Sections
from analysis.verdicts import Margin

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
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
