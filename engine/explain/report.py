"""One self-contained HTML file of an evaluation, to send to a colleague: per head its metrics, its
confusion matrix (single-label) or per-label / per-target table, its most confident mistakes with their
heatmaps, and the label audit. Every image is embedded as a data URI; nothing is fetched when it opens.
"""
from __future__ import annotations

import base64
import datetime
import io
import math
import os
from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import Any

from PIL import Image

from engine.errors import GraftError
from engine.explain.dense_pictures import draw_overlay
from engine.explain.heatmap import explain, model_input
from engine.explain.mistakes import AUDIT_CONFIDENCE, Example, label_audit, mistakes
from engine.files import atomic_write
from engine.network.heads import KIND_TITLES

CARD_HINT = {"single": "where the head found the evidence for its (wrong) answer",
             "multi": "where the head found evidence for the label (wrongly seen, or too little of it)",
             "regression": "where the head looked for the value it predicted"}
DENSE_HINT = {"segment": "the predicted mask in its class colours over what the network saw",
              "detect": "the predicted boxes with their scores, the true boxes in white"}
MISTAKES_PER_HEAD = 8
AUDIT_ROWS = 40
CARD_SIDE = 168
THUMB_SIDE = 64

STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px auto;max-width:1180px;color:#263238;
 padding:0 16px;line-height:1.4}
h1{font-size:1.6em;margin:0 0 4px} h2{font-size:1.3em;margin:0 0 6px;border-bottom:2px solid #cfd8dc;padding-bottom:4px}
h3{font-size:1.05em;margin:18px 0 6px;color:#37474f} .hint{color:#607d8b;font-size:.9em}
section{margin:28px 0} nav a{margin-right:14px;color:#1e88e5;text-decoration:none}
.kind{font-size:.7em;color:#607d8b;font-weight:normal} .metric{font-size:1.15em;font-weight:600}
table{border-collapse:collapse;font-size:.9em} td,th{padding:4px 8px;border:1px solid #e0e0e0;text-align:right}
th{background:#eceff1;font-weight:600} td.name,th.name{text-align:left}
table.confusion td{min-width:42px;text-align:center} table.confusion th.corner{background:#fff;border:none}
.cards{display:flex;flex-wrap:wrap;gap:12px} .card{width:168px;font-size:.82em;border:1px solid #e0e0e0;border-radius:6px;
 padding:6px;background:#fafafa} .card img{width:168px;height:168px;display:block;border-radius:4px}
.card .file{color:#607d8b;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.wrong{color:#c62828;font-weight:600} .truth{color:#2e7d32} table.audit img{width:64px;height:64px;display:block}
table.audit td{vertical-align:middle}
"""


def _data_uri(image: Image.Image, side: int) -> str:
    picture = image.convert("RGB")
    picture.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _headline(head: Any) -> str:
    d = head.details
    if head.kind == "single":
        return f"accuracy {_pct(d.get('accuracy'))}"
    if head.kind == "multi":
        return f"macro F1 {_num(d.get('macro_f1'))}"
    if head.kind == "segment":
        return f"mIoU {_num(d.get('miou'))}"
    if head.kind == "detect":
        return f"mAP@0.5 {_num(d.get('map_50'))} · mAP@0.5:0.95 {_num(d.get('map'))}"
    return f"MAE {_num(d.get('mae'), 4)}"


def _segment_table(d: dict[str, Any]) -> str:
    rows = ["<table class='iou'><tr><th class='name'>class</th><th>IoU</th></tr>"]
    for name, iou in zip(d.get("classes", []), d.get("iou", [])):
        rows.append(f"<tr><td class='name'>{escape(str(name))}</td><td>{_num(iou)}</td></tr>")
    return ("".join(rows) + "</table><p class='hint'>IoU: the overlap of the predicted and the true pixels of a "
            "class over their union, on the labelled pixels (–: the class is in no mask and never predicted).</p>")


def _detect_table(d: dict[str, Any]) -> str:
    cells = [("mAP@0.5", d.get("map_50")), ("mAP@0.75", d.get("map_75")), ("mAP@0.5:0.95", d.get("map"))]
    return ("<table class='map'><tr>" + "".join(f"<th>{k}</th>" for k, _ in cells) + "</tr><tr>"
            + "".join(f"<td>{_num(v)}</td>" for _, v in cells) + "</tr></table>"
            f"<p class='hint'>COCO mean average precision (pycocotools) over {d.get('n', 0)} images with box labels: "
            "at IoU 0.5 a box counts when it overlaps a true box by half; 0.5:0.95 averages stricter overlaps.</p>")


def _shade(t: float, colour: tuple[int, int, int]) -> str:
    t = max(0.0, min(1.0, t))
    r, g, b = (round(255 + (c - 255) * t) for c in colour)
    return f"#{r:02x}{g:02x}{b:02x}"


def _confusion_html(classes: list[str], matrix: list[list[int]], head: str) -> str:
    if not classes or not matrix:
        return ""
    top = max((v for row in matrix for v in row), default=0) or 1
    out = ["<table class='confusion' data-head='{}'><tr><th class='corner'>true \\ predicted</th>".format(escape(head))]
    out += [f"<th>{escape(c)}</th>" for c in classes]
    out.append("</tr>")
    for r, (name, row) in enumerate(zip(classes, matrix)):
        out.append(f"<tr><th class='name'>{escape(name)}</th>")
        for c, v in enumerate(row):
            colour = (30, 136, 229) if r == c else (229, 57, 53)
            ink = "#fff" if v / top > 0.55 else "#263238"
            out.append(f"<td style='background:{_shade(v / top, colour)};color:{ink}'>{v}</td>")
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


def _multi_table(d: dict[str, Any]) -> str:
    rows = ["<table><tr><th class='name'>label</th><th>F1</th><th>positives</th><th>labelled</th>"
            "<th>false positives</th><th>false negatives</th></tr>"]
    for i, label in enumerate(d.get("labels", [])):
        cells = [_num((d.get("f1") or [None] * (i + 1))[i])] + [str((d.get(k) or [0] * (i + 1))[i])
                                                                  for k in ("support", "n", "fp", "fn")]
        rows.append(f"<tr><td class='name'>{escape(label)}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return "".join(rows) + "</table>"


def _regression_table(d: dict[str, Any]) -> str:
    rows = ["<table><tr><th class='name'>target</th><th>MAE</th><th>labelled</th></tr>"]
    for i, label in enumerate(d.get("labels", [])):
        mae = (d.get("mae_per_output") or [None] * (i + 1))[i]
        n = (d.get("n") or [0] * (i + 1))[i]
        rows.append(f"<tr><td class='name'>{escape(label)}</td><td>{_num(mae, 4)}</td><td>{n}</td></tr>")
    return "".join(rows) + "</table>"


class _Pictures:
    """Heatmap overlays of mistakes (or plain thumbnails where a heatmap cannot be drawn, said once)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.problem: str | None = None

    def card(self, example: Example, kind: str) -> str:
        if example.overlay is not None:  # a dense head: its mask or boxes, no heatmap
            try:
                picture, _ = model_input(self.session, example.image)
            except GraftError:
                picture = Image.new("RGB", (CARD_SIDE, CARD_SIDE), (236, 239, 241))
            return _data_uri(draw_overlay(picture, example.overlay), CARD_SIDE)
        target = example.label if kind != "single" else example.prediction
        picture = None
        if self.problem is None:
            try:
                heads = explain(self.session, example.image, heads=[example.head], target=target)
                picture = heads[0].overlay()
            except GraftError as exc:
                self.problem = str(exc)
        if picture is None:
            try:
                picture, _ = model_input(self.session, example.image)
            except GraftError:
                picture = Image.new("RGB", (CARD_SIDE, CARD_SIDE), (236, 239, 241))
        return _data_uri(picture, CARD_SIDE)


def _card_html(example: Example, uri: str, kind: str) -> str:
    name = escape(Path(example.image).name)
    if example.iou is not None:
        return (f"<div class='card' data-image='{escape(example.image)}'><img src='{uri}' alt='{name}'>"
                f"<div class='wrong'>IoU {example.iou:.2f}</div><div>truth: <span class='truth'>"
                f"{escape(example.truth)}</span></div><div>predicted: {escape(example.prediction)}</div>"
                f"<div class='file' title='{escape(example.image)}'>{name}</div></div>")
    if kind == "regression":
        what = (f"<span class='truth'>{escape(example.truth)}</span> → <span class='wrong'>{escape(example.prediction)}"
                f"</span>" + (f" ({escape(example.label)})" if example.label else ""))
        detail = f"error {example.error:+.4g}" if example.error is not None else ""
    else:
        what = (f"<span class='truth'>{escape(example.truth)}</span> → "
                f"<span class='wrong'>{escape(example.prediction)}</span>")
        detail = f"{_pct(example.confidence)} sure"
    return (f"<div class='card' data-image='{escape(example.image)}'><img src='{uri}' alt='{name}'>"
            f"<div>{what}</div><div>{detail} · loss {example.loss:.3g}</div>"
            f"<div class='file' title='{escape(example.image)}'>{name}</div></div>")


def build_report(session: Any, report: Any, *, data_name: str = "", selection: str = "",
                 mistakes_per_head: int = MISTAKES_PER_HEAD, audit_rows: int = AUDIT_ROWS,
                 confidence: float = AUDIT_CONFIDENCE,
                 on_progress: Callable[[int, int], None] | None = None) -> str:
    """The report's HTML. ``selection``: a line saying which images were evaluated. Heatmaps show the
    evidence for each mistake's wrong answer (multi-label: for the label; regression: the target)."""
    pictures = _Pictures(session)
    chosen = {h: mistakes(report, h, mistakes_per_head) for h in report.heads}
    audit = label_audit(report, confidence)
    total, done = sum(len(v) for v in chosen.values()), 0
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    title = f"Graft evaluation — {data_name}" if data_name else "Graft evaluation"
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
             f"<meta name='viewport' content='width=device-width,initial-scale=1'><style>{STYLE}</style></head><body>",
             f"<h1>{escape(title)}</h1>",
             f"<p class='hint'>Model: {escape(session.describe())} · {report.n_images} images"
             + (f" · total loss {report.loss:.4f}" if report.loss is not None else "")
             + f" · evaluated in {report.seconds:.1f} s on {escape(report.device)} · {when}</p>"]
    if selection:
        parts.append(f"<p class='hint'>{escape(selection)}</p>")
    parts.append("<nav>" + "".join(f"<a href='#head-{escape(h)}'>{escape(h)}: {escape(_headline(r))}</a>"
                                   for h, r in report.heads.items())
                 + "<a href='#audit'>label audit</a></nav>")
    for name, head in report.heads.items():
        d = head.details
        parts.append(f"<section class='head' id='head-{escape(name)}' data-head='{escape(name)}'>"
                     f"<h2>{escape(name)} <span class='kind'>{escape(KIND_TITLES.get(head.kind, head.kind))}</span></h2>"
                     f"<p><span class='metric'>{escape(_headline(head))}</span> · {head.n} labelled images · "
                     f"loss {_num(head.loss, 4)}</p>")
        if head.kind == "single":
            parts.append("<h3>Confusion matrix</h3><p class='hint'>Rows: the true class; columns: the head's answer."
                         "</p>" + _confusion_html(head.classes, head.confusion or [], name))
        elif head.kind == "multi":
            parts.append("<h3>Per label</h3>" + _multi_table(d))
        elif head.kind == "segment":
            parts.append("<h3>Per class</h3>" + _segment_table(d))
        elif head.kind == "detect":
            parts.append("<h3>Mean average precision</h3>" + _detect_table(d))
        else:
            parts.append("<h3>Per target</h3>" + _regression_table(d))
        heading = {"single": "Most confident mistakes", "multi": "Most confident wrong labels",
                   "regression": "Largest errors", "segment": "Worst IoU", "detect": "Worst IoU"}[head.kind]
        examples = chosen[name]
        parts.append(f"<h3>{heading}</h3>")
        if not examples:
            parts.append("<p class='hint'>None: every labelled image is answered right.</p>")
        elif head.kind in DENSE_HINT:
            parts.append(f"<p class='hint'>Lowest IoU with the truth first; each picture shows "
                         f"{DENSE_HINT[head.kind]}.</p><div class='cards'>")
        else:
            parts.append(f"<p class='hint'>Highest loss first; the heatmap shows {CARD_HINT[head.kind]}.</p>"
                         "<div class='cards'>")
        if examples:
            for example in examples:
                parts.append(_card_html(example, pictures.card(example, head.kind), head.kind))
                done += 1
                if on_progress is not None:
                    on_progress(done, total)
            parts.append("</div>")
        parts.append("</section>")
    if pictures.problem:
        parts.insert(3, f"<p class='hint'>No heatmaps: {escape(pictures.problem)}</p>")
    parts.append(_audit_html(session, report, audit, audit_rows, confidence))
    parts.append("</body></html>")
    return "".join(parts)


def _audit_value(kinds: dict[str, str], head: str, value: str) -> str:
    """A multi-label cell in words (the CSV keeps 0 / 1)."""
    if kinds.get(head) == "multi" and value in ("0", "1"):
        return "yes (1)" if value == "1" else "no (0)"
    return value


def _audit_html(session: Any, report: Any, audit: list, rows: int, confidence: float) -> str:
    kinds = {name: head.kind for name, head in report.heads.items()}
    contradicted = sum(1 for s in audit if s.reason == "contradicted")
    blanks = len(audit) - contradicted
    out = ["<section id='audit'><h2>Label audit</h2>",
           f"<p>{contradicted} label(s) the model contradicts with at least {confidence:.0%} confidence (likely "
           f"mislabelled), and {blanks} blank cell(s) with the label it suggests. Graft changed none of them.</p>"]
    if not audit:
        return "".join(out) + "</section>"
    out.append("<table class='audit'><tr><th></th><th class='name'>image</th><th class='name'>head</th>"
               "<th class='name'>column</th><th class='name'>label</th><th class='name'>model says</th>"
               "<th>confidence</th><th class='name'>why listed</th></tr>")
    thumbs: dict[str, str] = {}
    for s in audit[:rows]:
        if s.image not in thumbs:
            try:
                picture, _ = model_input(session, s.image)
                thumbs[s.image] = _data_uri(picture, THUMB_SIDE)
            except GraftError:
                thumbs[s.image] = ""
        img = f"<img src='{thumbs[s.image]}' alt=''>" if thumbs[s.image] else ""
        why = "likely mislabelled" if s.reason == "contradicted" else "blank"
        out.append(f"<tr><td>{img}</td><td class='name'>{escape(Path(s.image).name)}</td>"
                   f"<td class='name'>{escape(s.head)}</td><td class='name'>{escape(s.column)}</td>"
                   f"<td class='name'>{escape(_audit_value(kinds, s.head, s.current)) or '<i>blank</i>'}</td>"
                   f"<td class='name'>{escape(_audit_value(kinds, s.head, s.suggested))}</td>"
                   f"<td>{_pct(s.confidence)}</td><td class='name'>{why}</td></tr>")
    out.append("</table>")
    if len(audit) > rows:
        out.append(f"<p class='hint'>… and {len(audit) - rows} more (evaluate --suggestions FILE.csv lists them all)."
                   "</p>")
    return "".join(out) + "</section>"


def write_report(path: str | os.PathLike, html: str) -> Path:
    path = Path(path).expanduser()
    atomic_write(path, lambda tmp: tmp.write_text(html, encoding="utf-8"))
    return path
