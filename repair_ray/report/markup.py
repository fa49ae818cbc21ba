"""The HTML every page of the report shares: its head (title and style) and its tables."""

from __future__ import annotations

import html

import pandas as pd

STYLE = (
    "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}"
    "table{border-collapse:collapse;font-size:13px}td,th{padding:3px 8px;border-bottom:1px solid #ddd;"
    "text-align:right}th{background:#f4f4f4}img{max-width:100%;border:1px solid #eee}"
    ".note{color:#a05a00}figure{margin:1.5em 0}"
    ".warning{background:#fff4e5;border-left:4px solid #e69500;padding:0.4em 1em;margin:1em 0}</style>"
)


def head(title: str) -> list[str]:
    """The first lines of a page titled ``title``, up to the opening ``<body>``."""
    return [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        STYLE,
        "</head><body>",
    ]


def html_table(frame: pd.DataFrame) -> str:
    """``frame`` as an HTML table (floats to 4 significant digits), or a note that it has no rows."""
    if frame.empty:
        return "<p><em>(no rows)</em></p>"
    return frame.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}", border=0, classes="table")
