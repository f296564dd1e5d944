"""engine.explain.report: one self-contained HTML file that shows every head."""
from __future__ import annotations

from html.parser import HTMLParser

import pytest

from engine.explain.mistakes import label_audit, mistakes
from engine.explain.report import MISTAKES_PER_HEAD, build_report, write_report

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # 2 shared cores: one thread each


class Page(HTMLParser):
    """What a browser would load and show: sections by head, images, confusion cells, links out."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.sources: list[str] = []
        self.cards: dict[str, int] = {}
        self.confusion: dict[str, list[list[int]]] = {}
        self.outside: list[str] = []
        self.audit_rows = 0
        self._head = ""
        self._table: str | None = None
        self._in_audit = False
        self._in_td = False
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section" and a.get("data-head"):
            self._head = a["data-head"]
            self.sections.append(self._head)
        if tag == "section" and a.get("id") == "audit":
            self._in_audit, self._head = True, ""
        if tag == "img":
            self.sources.append(a.get("src", ""))
        if tag == "div" and a.get("class") == "card":
            self.cards[self._head] = self.cards.get(self._head, 0) + 1
        if tag == "table" and a.get("class") == "confusion":
            self._table = a["data-head"]
            self.confusion[self._table] = []
        if tag == "tr" and self._table is not None:
            self.confusion[self._table].append([])
        if tag == "tr" and self._in_audit:
            self.audit_rows += 1
        if tag == "td" and self._table is not None:
            self._in_td = True
        for key in ("href", "src"):
            value = a.get(key, "")
            if value and not value.startswith(("data:", "#")):
                self.outside.append(value)
        if tag in ("link", "script", "iframe"):
            self.outside.append(tag)

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        if tag == "td":
            self._in_td = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_td and self._table is not None:
            self.confusion[self._table][-1].append(int(data))


def test_the_report_shows_every_head_self_contained(evaluated, tmp_path):
    session, _, report = evaluated
    done = []
    html = build_report(session, report, data_name="labels.csv", selection="60 demo images",
                        on_progress=lambda d, t: done.append((d, t)))
    path = write_report(tmp_path / "report.html", html)
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    assert page.sections == list(report.heads) == ["shape", "tags", "size"]
    assert page.outside == []  # nothing fetched from anywhere when it opens
    assert page.sources and all(s.startswith("data:image/jpeg;base64,") for s in page.sources)
    head = report.heads["shape"]
    assert [row for row in page.confusion["shape"] if row] == head.confusion
    for name in report.heads:
        assert page.cards.get(name, 0) == min(MISTAKES_PER_HEAD, len(mistakes(report, name)))
    assert done and done[-1][0] == done[-1][1] == sum(page.cards.values())
    text = " ".join(page.text)
    assert "accuracy" in text and "macro F1" in text and "MAE" in text and "Label audit" in text
    assert "No heatmaps" not in text  # a random-weights CNN still has layers to hook
    shown = min(40, len(label_audit(report)))
    assert page.audit_rows == shown + 1  # a header row, then one per suggestion
