"""Evaluation reports: one structure, rendered as a self-contained HTML file (images embedded)
and as Markdown (images as PNG files beside it), so the two never disagree."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import atomic
from .grid import png_bytes


@dataclass
class Table:
    title: str
    frame: pd.DataFrame
    note: str = ""


@dataclass
class Figure:
    title: str
    image: np.ndarray  # (H, W) gray or (H, W, 3) RGB, in [0, 1]
    caption: str = ""
    upscale: int = 1

    def png(self) -> bytes:
        return png_bytes(self.image, upscale=self.upscale)


@dataclass
class Section:
    title: str
    text: str = ""
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


@dataclass
class Report:
    title: str
    summary: str  # a paragraph: what was evaluated, on what, with how many images
    sections: list[Section]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# Display enhancement (reports/enhancement.py) is for people looking at images in the app; a report
# shows what it measured.
RAW_IMAGES_NOTE = (
    "Images are shown as the models produced them (raw, no display enhancement); every figure is "
    "computed on raw outputs."
)


def markdown_table(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False, disable_numparse=True)


def render_markdown(report: Report, image_folder: str = "images") -> tuple[str, dict[str, bytes]]:
    """The Markdown text and the PNG files it refers to (relative names -> bytes)."""
    lines, files = [f"# {report.title}", "", report.summary, "", f"*{RAW_IMAGES_NOTE}*", ""], {}
    for section in report.sections:
        lines += [f"## {section.title}", ""]
        if section.text:
            lines += [section.text, ""]
        for table in section.tables:
            lines += [f"### {table.title}", "", markdown_table(table.frame), ""]
            if table.note:
                lines += [f"*{table.note}*", ""]
        for figure in section.figures:
            name = f"{image_folder}/{_slug(section.title)}-{_slug(figure.title)}.png"
            files[name] = figure.png()
            lines += [f"### {figure.title}", "", f"![{figure.title}]({name})", ""]
            if figure.caption:
                lines += [f"*{figure.caption}*", ""]
    return "\n".join(lines), files


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
img { image-rendering: pixelated; max-width: 100%; border: 1px solid #ddd; }
.note, figcaption { color: #555; font-size: 0.85em; }
"""


def render_html(report: Report) -> str:
    """One self-contained page: styles inline, images as data URIs."""
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(report.title)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(report.title)}</h1>",
        f"<p>{html.escape(report.summary)}</p>",
        f"<p class='note'>{html.escape(RAW_IMAGES_NOTE)}</p>",
    ]
    for section in report.sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.text:
            parts.append(f"<p>{html.escape(section.text)}</p>")
        for table in section.tables:
            parts.append(f"<h3>{html.escape(table.title)}</h3>")
            parts.append(table.frame.to_html(index=False, escape=True, border=0))
            if table.note:
                parts.append(f"<p class='note'>{html.escape(table.note)}</p>")
        for figure in section.figures:
            encoded = base64.b64encode(figure.png()).decode("ascii")
            parts.append(
                f"<figure><h3>{html.escape(figure.title)}</h3>"
                f"<img alt='{html.escape(figure.title)}' src='data:image/png;base64,{encoded}'>"
            )
            if figure.caption:
                parts.append(f"<figcaption>{html.escape(figure.caption)}</figcaption>")
            parts.append("</figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(report: Report, folder: Path) -> tuple[Path, Path]:
    """``report.html`` and ``report.md`` (+ ``images/``) in ``folder``, each written atomically."""
    folder = Path(folder)
    markdown, files = render_markdown(report)
    for name, data in files.items():
        atomic.write_bytes(folder / name, data)
    atomic.write_text(folder / "report.md", markdown)
    atomic.write_text(folder / "report.html", render_html(report))
    return folder / "report.html", folder / "report.md"
