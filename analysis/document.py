"""A report as a list of blocks (headings, paragraphs, verdicts, tables, images) written once, rendered twice.

Markdown links the PNGs beside it (`figures/...`); HTML embeds them as base64 so report.html is one
self-contained file to mail or attach. In HTML every table sits in its own horizontally scrolling box, so a wide
table never widens the page; images shrink to the page's width.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 1.2em auto; padding: 0 1em; color: #222;
       line-height: 1.4; }
h1 { font-size: 1.6em; margin: 0.2em 0 0.3em; }
h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.scroll { overflow-x: auto; max-width: 100%; margin: 0.6em 0 1.2em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.55em; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; }
img { display: block; max-width: 100%; height: auto; border: 1px solid #eee; margin: 0.5em 0; }
code { background: #f3f3f3; padding: 0 0.2em; }
.note { color: #555; font-size: 0.9em; }
.verdicts { list-style: none; padding: 0; margin: 0.5em 0; }
.verdicts li { border-left: 6px solid #999; background: #f7f7f7; padding: 0.45em 0.8em; margin: 0.4em 0; }
.verdicts .details { color: #444; font-size: 0.9em; }
.verdicts .outcome { font-weight: bold; text-transform: uppercase; font-size: 0.85em; letter-spacing: 0.03em; }
.verdicts li.matches, .verdicts li.better { border-color: #2e7d32; }
.verdicts li.worse { border-color: #c62828; }
.verdicts li.undecided { border-color: #f9a825; }
"""


def format_cell(value: object) -> str:
    """Numbers at 4 significant digits, counts with thousands separators, unknown values as '—'.

    A knob that does not apply (a LoRA rank of a full fine-tuning trial) arrives as "" and stays blank.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


@dataclass
class Document:
    """Blocks in reading order; `images` are paths relative to the report folder."""

    title: str
    blocks: list[tuple[str, object]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("paragraph", text))

    def note(self, text: str) -> None:
        """A side remark in smaller type: how to read a table, what is missing and why."""
        self.blocks.append(("note", text))

    def bullets(self, items: list[str]) -> None:
        if items:
            self.blocks.append(("bullets", items))

    def verdicts(self, lines: list[tuple[str, str, str, str]]) -> None:
        """The answer: (title, outcome, text, details) per line, outcome one of matches/better/worse/undecided."""
        if lines:
            self.blocks.append(("verdicts", lines))

    def table(self, frame: pd.DataFrame) -> None:
        shown = frame.astype(object).map(format_cell) if not frame.empty else frame
        self.blocks.append(("table", shown))

    def image(self, relative: str, alt: str) -> None:
        self.blocks.append(("image", (relative, alt)))

    def images(self) -> list[str]:
        return [block[1][0] for block in self.blocks if block[0] == "image"]

    def to_markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, body in self.blocks:
            if kind == "heading":
                out += ["#" * body[0] + " " + body[1], ""]
            elif kind in ("paragraph", "note"):
                out += [body if kind == "paragraph" else f"*{body}*", ""]
            elif kind == "verdicts":
                out += [
                    f"- **{title}: {outcome}.** {text} {details}".rstrip() for title, outcome, text, details in body
                ]
                out.append("")
            elif kind == "bullets":
                out += [f"- {item}" for item in body] + [""]
            elif kind == "table":
                out += [_markdown_table(body), ""]
            elif kind == "image":
                out += [f"![{body[1]}]({body[0]})", ""]
        return "\n".join(out)

    def to_html(self, folder: Path) -> str:
        """The report as one HTML page, images read from `folder` and embedded."""
        out = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(self.title)}</title><style>{CSS}</style></head><body>",
            f"<h1>{html.escape(self.title)}</h1>",
        ]
        for kind, body in self.blocks:
            if kind == "heading":
                out.append(f"<h{body[0]}>{html.escape(body[1])}</h{body[0]}>")
            elif kind in ("paragraph", "note"):
                out.append(f'<p class="{kind}">{html.escape(body)}</p>')
            elif kind == "verdicts":
                out.append(_verdicts_html(body))
            elif kind == "bullets":
                out.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in body) + "</ul>")
            elif kind == "table" and not body.empty:
                out.append(f'<div class="scroll">{body.to_html(index=False, escape=True, border=0)}</div>')
            elif kind == "image":
                data = base64.b64encode((folder / body[0]).read_bytes()).decode("ascii")
                out.append(f'<img src="data:image/png;base64,{data}" alt="{html.escape(body[1])}">')
        out.append("</body></html>")
        return "\n".join(out)


def _verdicts_html(lines: list[tuple[str, str, str, str]]) -> str:
    items = [
        f'<li class="{html.escape(outcome)}"><strong>{html.escape(title)}</strong> '
        f'<span class="outcome">{html.escape(outcome)}</span><br>{html.escape(text)}'
        f'<br><span class="details">{html.escape(details)}</span></li>'
        for title, outcome, text, details in lines
    ]
    return '<ul class="verdicts">' + "".join(items) + "</ul>"


def _markdown_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "(no rows)"

    def row(cells: list[object]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    lines = [row(list(frame.columns)), "| " + " | ".join("---" for _ in frame.columns) + " |"]
    return "\n".join([*lines, *(row(list(r)) for r in frame.itertuples(index=False))])
