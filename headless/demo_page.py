"""The demo's index.html: one static page that says what every picture is, and the numbers.

Pure functions from the manifest (pictures, overviews, workflows, run pictures) and summary.json to
an HTML string: inline CSS, no script, relative links only, every text escaped, so the page opens
from disk in any browser without a network.

Manifest layout (what scripts/demo.py writes to manifest.json):
    {"title": str, "intro": [str], "overviews": [{"file", "caption"}],
     "workflows": [{"name", "about", "runs": [run names], "evaluations": [names]}],
     "pictures": [DemoPicture fields], "run_pictures": {run: [{"file", "caption"}]}}
"""

from __future__ import annotations

import html
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .demo_pictures import slug

KIND_WORDS = {"output": "saved to output/", "temp": "preview"}
# What the columns of the numbers tables mean, shown under each table.
LEGENDS = {
    "runs": ("own / other: the learned token's share of attention inside its object's mask / inside the "
             "other object's mask, on the training photos, before and after training; loss start / end: "
             "mean total loss of the first / last 10 steps."),
    "guidance_compare": ("Pictures from the same prompt and seed after training without and with guidance, "
                         "read by the world's object rules (shapes_world/judge.py). fidelity: share showing the "
                         "trained object in its colour and shape; leakage: share showing the other object of the "
                         "training photos; green floor: share on a green floor (no training photo has one); "
                         "collapsed: share where object colours cover the picture. Each rate with its 90 % "
                         "Wilson interval: one seed; bench/shapes_world.py has three seeds and 64 pictures each."),
    "evaluation": ("clip_i / clip_t: CLIP image and text similarity (random-weight CLIP in the demo: it only "
                   "shows that scoring runs); kid: kernel inception distance; attention inside / iou: the "
                   "token's attention on its object."),
}
TABLE_TITLES = {"runs": "Training runs", "guidance_compare": "Guidance compared",
                "evaluation": "Evaluation scores"}
CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-top: 0.6em; }
nav a { margin-right: 1em; } .about { font-style: italic; } .meta { color: #555; font-size: 0.85em; }
table { border-collapse: collapse; margin: 0.5em 0; } th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.grid { display: flex; flex-wrap: wrap; gap: 0.8em; align-items: flex-start; }
figure { margin: 0; width: min-content; min-width: 200px; } figure.wide { width: auto; max-width: 100%; }
figure img { min-height: 128px; max-height: 320px; max-width: 100%; image-rendering: pixelated;
             border: 1px solid #ddd; }
figure.wide img { min-height: 0; max-height: none; }
figcaption { font-size: 0.9em; overflow-wrap: anywhere; } figcaption .meta { font-size: 0.8em; }
"""


def esc(value: Any) -> str:
    """Text for HTML content and quoted attributes."""
    return html.escape(str(value), quote=True)


def href(file: str) -> str:
    """A relative link to a file of the demo folder, percent-encoded, escaped for an attribute."""
    if file.startswith("/") or "://" in file or ".." in file.split("/"):
        raise ValueError(f"demo page links must stay inside the demo folder: {file!r}")
    return esc(urllib.parse.quote(file))


def anchor(name: str) -> str:
    return slug(name)


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return esc(value)


def render_table(rows: Mapping[str, Mapping[str, Any]], first_column: str) -> str:
    """A table with one row per key and one column per field any row has."""
    columns: list[str] = []
    for row in rows.values():
        columns += [c for c in row if c not in columns]
    head = "".join(f"<th>{esc(c)}</th>" for c in (first_column, *columns))
    body = []
    for name, row in rows.items():
        cells = "".join(f'<td class="num">{_number(row[c])}</td>' if isinstance(row.get(c), (int, float))
                        else f"<td>{esc(row.get(c, ''))}</td>" for c in columns)
        body.append(f'<tr id="{esc(anchor("row " + name))}"><th>{esc(name)}</th>{cells}</tr>')
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def render_figure(file: str, caption: str, meta: str = "", wide: bool = False) -> str:
    cls = ' class="wide"' if wide else ""
    meta_html = f'<br><span class="meta">{esc(meta)}</span>' if meta else ""
    return (f'<figure{cls}><a href="{href(file)}"><img src="{href(file)}" alt="{esc(caption)}"></a>'
            f"<figcaption>{esc(caption)}{meta_html}</figcaption></figure>")


def _picture_meta(picture: Mapping[str, Any], first_use: Mapping[str, Any] | None) -> str:
    where = (f"{picture['workflow']}, node {picture['node_id']} '{picture['node_title']}' "
             f"({picture['node_class']}), {KIND_WORDS.get(picture['kind'], picture['kind'])}; {picture['file']}")
    if first_use is not None:
        where += (f"; the same picture as {first_use['workflow']} node {first_use['node_id']} "
                  f"'{first_use['node_title']}'")
    return where


def _group_by_node(pictures: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for picture in pictures:
        groups.setdefault(str(picture["node_id"]), []).append(picture)
    return groups


def render_workflow(workflow: Mapping[str, Any], pictures: Sequence[Mapping[str, Any]],
                    first_use: Mapping[str, Mapping[str, Any]], summary: Mapping[str, Any],
                    run_pictures: Mapping[str, Sequence[Mapping[str, str]]]) -> str:
    """One workflow's section: what it does, its pictures node by node, its runs' numbers and pictures."""
    name = str(workflow["name"])
    parts = [f'<section id="{esc(anchor(name))}"><h2>{esc(name)}</h2>',
             f'<p class="about">{esc(workflow.get("about", ""))}</p>']
    for node_id, group in _group_by_node(p for p in pictures if p["workflow"] == name).items():
        head = group[0]
        parts.append(f"<h3>Node {esc(node_id)}: {esc(head['node_title'])} <span class=\"meta\">"
                     f"({esc(head['node_class'])}, {esc(KIND_WORDS.get(head['kind'], head['kind']))}, "
                     f"{len(group)} picture{'s' if len(group) != 1 else ''})</span></h3>")
        figures = []
        for picture in group:
            earlier = first_use.get(picture["file"])
            shown_before = earlier is not None and earlier is not picture
            figures.append(render_figure(picture["file"], picture["caption"],
                                         _picture_meta(picture, earlier if shown_before else None)))
        parts.append(f'<div class="grid">{"".join(figures)}</div>')
    runs = {r: summary.get("runs", {})[r] for r in workflow.get("runs", []) if r in summary.get("runs", {})}
    if runs:
        parts.append(f"<h3>Trained here</h3>{render_table(runs, 'run')}")
    for run in workflow.get("runs", []):
        if run_pictures.get(run):
            figures = [render_figure(p["file"], f"{run}: {p['caption']}", f"{name}, run folder; {p['file']}")
                       for p in run_pictures[run]]
            parts.append(f"<h3>Pictures in the run folder of {esc(run)}</h3>"
                         f'<div class="grid">{"".join(figures)}</div>')
    scores = {e: summary.get("evaluation", {})[e] for e in workflow.get("evaluations", [])
              if e in summary.get("evaluation", {})}
    if scores:
        parts.append(f"<h3>Scores</h3>{render_table(scores, 'images')}")
    parts.append("</section>")
    return "\n".join(parts)


def render_numbers(summary: Mapping[str, Any]) -> str:
    """Every table of summary.json (a table per key whose value maps names to rows)."""
    parts = ['<section id="numbers"><h2>The numbers</h2>']
    for key, rows in summary.items():
        if isinstance(rows, Mapping) and rows and all(isinstance(r, Mapping) for r in rows.values()):
            parts.append(f"<h3>{esc(TABLE_TITLES.get(key, key))}</h3>{render_table(rows, 'name')}")
            if key in LEGENDS:
                parts.append(f'<p class="meta">{esc(LEGENDS[key])}</p>')
    parts.append("</section>")
    return "\n".join(parts)


def render_page(manifest: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    """The whole index.html."""
    title = manifest.get("title", "Demo")
    workflows = list(manifest.get("workflows", []))
    pictures = list(manifest.get("pictures", []))
    first_use: dict[str, Mapping[str, Any]] = {}
    for picture in pictures:
        first_use.setdefault(picture["file"], picture)
    nav = " ".join(f'<a href="#{esc(anchor(w["name"]))}">{esc(w["name"])}</a>' for w in workflows)
    intro = "".join(f"<p>{esc(p)}</p>" for p in manifest.get("intro", []))
    overviews = "".join(render_figure(o["file"], o["caption"], o["file"], wide=True)
                        for o in manifest.get("overviews", []))
    run_pictures = manifest.get("run_pictures", {})
    sections = "\n".join(render_workflow(w, pictures, first_use, summary, run_pictures) for w in workflows)
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{esc(title)}</title><style>{CSS}</style></head>
<body>
<h1>{esc(title)}</h1>
{intro}
<nav><a href="#overview">overview</a> <a href="#numbers">numbers</a> {nav}</nav>
<section id="overview"><h2>Overview</h2><div class="grid">{overviews}</div></section>
{render_numbers(summary)}
{sections}
</body>
</html>
"""
