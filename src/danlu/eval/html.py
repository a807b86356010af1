"""Self-contained HTML pages for eval run folders: inline CSS and SVG, no scripts, no network requests."""

from __future__ import annotations

import html
from typing import Any, Iterable

from danlu.runs import atomic_write_text

CSS = """
body{font-family:-apple-system,"Segoe UI","Noto Sans CJK SC","PingFang SC",sans-serif;margin:2em;color:#222;max-width:1200px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.up{color:#11772b}.down{color:#b3261e}.muted{color:#777}
pre{white-space:pre-wrap;max-width:60em;margin:0;font-size:.85em}
.note{background:#f8f8f0;border-left:3px solid #cc9;padding:.4em .8em}
"""


class Raw(str):
    """A table cell that is already HTML (not escaped again)."""


def esc(x: Any) -> str:
    return html.escape(str(x))


def fmt(x: Any, digits: int = 4) -> str:
    if isinstance(x, bool) or x is None:
        return "" if x is None else str(x)
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def table(columns: list[str], rows: Iterable[list[Any]], classes: dict[int, str] | None = None) -> str:
    """An HTML table; numbers right-aligned; a cell given as ("text", "css class") gets that class; a Raw cell
    is inserted as it is."""
    out = ["<table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in columns) + "</tr>"]
    for row in rows:
        cells = []
        for v in row:
            if isinstance(v, Raw):
                cells.append(f"<td>{v}</td>")
                continue
            cls = ""
            if isinstance(v, tuple):
                v, cls = v
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            cls = " ".join(c for c in (cls, "num" if num else "") if c)
            cells.append(f"<td{f' class={chr(34)}{cls}{chr(34)}' if cls else ''}>{esc(fmt(v))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out + ["</table>"])


def bars(values: dict[str, float], vmax: float | None = None, width: int = 360) -> str:
    """A horizontal bar chart as inline SVG (e.g. accuracy per subject)."""
    if not values:
        return ""
    vmax = vmax or max(max(values.values()), 1e-9)
    h, label_w = 18, 220
    rows = []
    for i, (k, v) in enumerate(values.items()):
        w = max(0.0, v) / vmax * width
        rows.append(f'<text x="{label_w - 6}" y="{i * h + 13}" text-anchor="end" font-size="11">{esc(k)}</text>'
                    f'<rect x="{label_w}" y="{i * h + 3}" width="{w:.1f}" height="{h - 6}" fill="#5b8def"/>'
                    f'<text x="{label_w + w + 4:.1f}" y="{i * h + 13}" font-size="11">{v:.3f}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + width + 60}" height="{len(values) * h + 4}">'
            + "".join(rows) + "</svg>")


def pre(text: str, limit: int = 2000) -> str:
    text = text if len(text) <= limit else text[:limit] + " …"
    return f"<pre>{esc(text)}</pre>"


def page(title: str, report: dict, sections: list[tuple[str, str]]) -> str:
    c = report.get("counts", {})
    head = report.get("summary") or {}
    summary = (f"<p class='note'>{esc(c.get('unit', 'records'))}: in {fmt(c.get('in'))}, kept {fmt(c.get('kept'))}, "
               f"filtered {fmt(sum((c.get('filtered') or {}).values()))}, "
               f"rejected {fmt(sum((c.get('rejected') or {}).values()))}"
               + ("<br>" + " · ".join(f"{esc(k)} = {esc(fmt(v))}" for k, v in head.items()) if head else "")
               + "".join(f"<br>warning: {esc(w)}" for w in report.get("warnings") or []) + "</p>")
    body = "".join(f"<h2>{esc(h)}</h2>\n{content}\n" for h, content in sections)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>{CSS}</style>"
            f"</head><body><h1>{esc(title)}</h1>{summary}{body}</body></html>\n")


def write_page(path, title: str, report: dict, sections: list[tuple[str, str]]) -> None:
    atomic_write_text(path, page(title, report, sections))
