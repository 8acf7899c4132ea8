"""Small HTML building blocks for the self-contained report: every text escaped, every image inline."""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Iterable, Sequence

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2327;background:#fafafa}
header{background:#1f3a5f;color:#fff;padding:18px 28px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:0;opacity:.85}nav{padding:8px 28px;background:#e8edf3;position:sticky;top:0;z-index:2}
nav a{margin-right:14px;color:#1f3a5f;text-decoration:none;font-weight:600}
main{padding:8px 28px 40px;max-width:1280px}section{background:#fff;border:1px solid #dde3ea;
border-radius:8px;padding:14px 18px;margin:16px 0}h2{margin:0 0 10px;font-size:18px}
h3{font-size:15px;margin:14px 0 6px}.banner{background:#fff3cd;border:1px solid #e0c36c;
padding:10px 14px;border-radius:6px;margin:14px 0;font-weight:600}
.missing{color:#7a6000;background:#fffbea;padding:8px 12px;border-radius:6px}
.note{color:#555}table{border-collapse:collapse;margin:6px 0 10px}
th,td{border:1px solid #dde3ea;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f1f4f8}td.num{text-align:right;font-variant-numeric:tabular-nums}
.stats{display:flex;flex-wrap:wrap;gap:10px;margin:6px 0 12px}.stat{background:#f1f4f8;
border-radius:6px;padding:6px 12px}.stat b{display:block;font-size:20px}
.gallery{display:flex;flex-wrap:wrap;gap:8px;margin:4px 0 12px}.row{border-top:1px dashed #dde3ea;
padding-top:6px}.cards{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #dde3ea;
border-radius:6px;padding:4px 8px}.card .gallery{margin:4px 0}figure{margin:0;width:132px;font-size:11px;word-break:break-all}
figure img{display:block;max-width:128px;max-height:128px;border:3px solid #ccc;border-radius:4px}
figure.keeper img{border-color:#2e8b57}figure.flag img{border-color:#c0392b}
figure.leak img{border-color:#d35400}img.plot{max-width:100%;border:1px solid #dde3ea}
"""


def esc(value) -> str:
    """Text made safe for HTML (None shows as an em dash)."""
    return "—" if value is None else html.escape(str(value), quote=True)


def png_data_uri(path: Path) -> str:
    """A PNG file inlined as a data: URI."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def plot(path: Path, alt: str) -> str:
    """An image file from the workdir, inlined."""
    return f'<img class="plot" alt="{esc(alt)}" src="{png_data_uri(path)}">'


def missing(text: str) -> str:
    """The note a section shows when its data does not exist yet."""
    return f'<p class="missing">{esc(text)}</p>'


def paragraph(text: str, cls: str = "note") -> str:
    return f'<p class="{cls}">{esc(text)}</p>'


def stats(items: Iterable[tuple[str, object]]) -> str:
    """A strip of headline figures: (label, value)."""
    cells = "".join(f'<div class="stat"><b>{esc(v)}</b>{esc(k)}</div>' for k, v in items)
    return f'<div class="stats">{cells}</div>'


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A table; numbers are right-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value) -> str:
    if isinstance(value, float):
        text = f"{value:.3f}" if value == 0 or abs(value) >= 0.01 else f"{value:.2g}"
        return f'<td class="num">{text}</td>'
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<td class="num">{value}</td>'
    return f"<td>{esc(value)}</td>"


def figure(src: str, caption_lines: Sequence[str], cls: str = "", title: str = "") -> str:
    """One thumbnail (a data: URI) with a short caption."""
    caption = "<br>".join(esc(line) for line in caption_lines)
    return (f'<figure class="{esc(cls)}" title="{esc(title)}"><img alt="{esc(title)}" src="{src}">'
            f"<figcaption>{caption}</figcaption></figure>")


def gallery(figures: Iterable[str], title: str | None = None, cls: str = "row") -> str:
    """A wrapping row of figures with an optional heading (cls 'card': a small box for cards())."""
    heading = f"<div><b>{esc(title)}</b></div>" if title else ""
    return f'<div class="{cls}">{heading}<div class="gallery">{"".join(figures)}</div></div>'


def cards(items: Iterable[str]) -> str:
    """Small galleries (e.g. one duplicate group each) side by side, wrapping."""
    return f'<div class="cards">{"".join(items)}</div>'


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]],
         banner: str | None = None) -> str:
    """The whole document from (anchor, title, body html) sections, with a sticky table of contents."""
    nav = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t, _ in sections)
    body = "".join(section(a, t, b) for a, t, b in sections)
    note = f'<div class="banner">{esc(banner)}</div>' if banner else ""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<style>{CSS}</style></head><body><header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p>"
            f"</header><nav>{nav}</nav><main>{note}{body}</main></body></html>\n")
