"""Checks the data-card tests share (test_report*.py): a card's page parsed (sections, images, tables), how a card
may show a count or a share under the small-cell rules and their complementary suppression, a run's manifest,
building a card, and what every per-unit funnel (report_cards.UnitFunnel) must hold."""

from __future__ import annotations

import csv
from html.parser import HTMLParser
from pathlib import Path

from beam_pipeline import report
from conftest import published

HIDDEN = {"<11", "suppressed"}


class Page(HTMLParser):
    """Section ids, image sources and every table (by class) as rows of cell texts."""

    def __init__(self, text: str):
        super().__init__()
        self.sections, self.images, self.tables = [], [], {}
        self._table = self._row = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs["id"])
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag == "table":
            self._table = self.tables.setdefault(attrs.get("class", ""), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._row.append("")

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = self._row = None

    def handle_data(self, data):
        if self._row is not None and self._row:
            self._row[-1] += data


def shown(n: int) -> str:
    """How the data card shows a count: 1 to 10 as "<11"."""
    return "<11" if 1 <= n <= 10 else f"{n:,}"


def hidden_ok(cell: str, n: int) -> bool:
    """A count as the card may show it: as Count shows it, or hidden ("suppressed") to protect a small one."""
    return cell == shown(n) or (cell == "suppressed" and n > 10)


def share_ok(cell: str, count_cell: str, n: int, total: int) -> bool:
    """A share: hidden with its count, else n / total."""
    return cell == count_cell if count_cell in HIDDEN else cell == f"{n / total:.1%}"


def manifest_rows(output) -> list[dict[str, str]]:
    """The published run's manifest rows, shard by shard."""
    return [row for p in sorted((published(output) / "manifest").glob("*.csv")) for row in csv.DictReader(p.open())]


def card(output, **kwargs) -> tuple[Path, Page]:
    """report.build(output, **kwargs): the card's index.html and its parsed page."""
    index = Path(report.build(str(output), **kwargs))
    return index, Page(index.read_text())


def card_with_samples(output, samples: int = 1) -> tuple[Path, Page]:
    """The card with ``samples`` records, written beside the run's output (report-with-samples)."""
    return card(output, samples=samples, target=str(Path(output).parent / "report-with-samples"))


def check_unit_funnel(page: Page, metadata: dict, dropped: dict[str, int] | None = None) -> list[str]:
    """What every per-unit funnel holds: the steps in metadata.json's order, each shown as Count would or hidden to
    protect a small one, "written" never hidden; the removals are the drop reasons (``dropped``: those the card
    lists, default all) and the unit rejects, shown alike, each step = the next + its removals; no hidden count
    follows from one step, the next and the removals between them; the reject lines and their total likewise, a unit
    reject shown the same in both tables. Returns the funnel table's row names, in order."""
    counts = metadata["counts"]
    rows = page.tables["funnel"][1:]
    steps = [row for row in rows if not row[0].startswith("− ")]
    assert [name for name, _ in steps] == list(metadata["funnel"])  # the funnel's order
    assert all(hidden_ok(cell, metadata["funnel"][name]) for name, cell in steps)
    assert steps[-1] == ["written", shown(counts["matched"])]  # the header shows it: never hidden
    removed = {row[0][2:]: row[1] for row in rows if row[0].startswith("− ")}
    expected = {**{f"dropped: {r}": n for r, n in (counts["dropped"] if dropped is None else dropped).items()},
                **{f"rejected: {r}": n for r, n in counts["rejected_by_reason"].items()}}
    assert set(removed) == set(expected)
    assert all(hidden_ok(cell, expected[name]) for name, cell in removed.items()), removed
    names = [row[0] for row in rows]
    cells = dict(rows)
    for before, after in zip(steps, steps[1:]):
        group = names[names.index(before[0]) + 1:names.index(after[0])]
        relation = [cells[before[0]], cells[after[0]], *(cells[name] for name in group)]
        assert sum(cell in HIDDEN for cell in relation) != 1, (before, after, relation)
        left = metadata["funnel"][before[0]] - sum(expected[name[2:]] for name in group)
        assert left == metadata["funnel"][after[0]], (before, after)
    rejects = {row[0]: row[2] for row in page.tables["rejects"][1:]}
    assert set(rejects) == {*counts["rejects_by_stage_reason"], "total"}
    assert all(hidden_ok(rejects[k], n) for k, n in counts["rejects_by_stage_reason"].items())
    assert hidden_ok(rejects["total"], counts["rejects_total"]) and sum(c in HIDDEN for c in rejects.values()) != 1
    for reason in counts["rejected_by_reason"]:
        assert rejects[reason] == removed[f"rejected: {reason}"]
    return names
