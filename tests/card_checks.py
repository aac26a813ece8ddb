"""Checks the data-card tests share (test_report*.py): a card's page parsed (sections, images, tables), how a card
may show a count or a share under the small-cell rules and their complementary suppression, a run's manifest,
building a card, and what every per-unit funnel (report_cards.UnitFunnel) must hold."""

from __future__ import annotations

import csv
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable

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


def follows(*cells: str) -> bool:
    """Whether a hidden count follows by subtraction from a relation (cells of which one is the sum of the others):
    exactly one of them is hidden."""
    return sum(cell in HIDDEN for cell in cells) == 1


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


def edited_run(output, folder: Path, edit: Callable[[dict, list[dict[str, str]]], None]) -> Path:
    """A copy of the published run in ``folder`` whose metadata.json and manifest rows ``edit`` changed in place: a
    run with the counts a card test needs."""
    run = Path(shutil.copytree(published(output), folder))
    metadata = json.loads((run / "metadata.json").read_text())
    shards = sorted((run / "manifest").glob("*.csv"))
    rows = [row for p in shards for row in csv.DictReader(p.open())]
    edit(metadata, rows)
    (run / "metadata.json").write_text(json.dumps(metadata))
    for p in shards[1:]:
        p.unlink()
    with shards[0].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return run


def drawn_figures(monkeypatch) -> list[list[dict]]:
    """Patches report._png, which saves every figure of the ED and symile cards, to keep what each figure shows: per
    axis its title, its horizontal bars' lengths by tick label, the total length of its bars and its annotations."""
    drawn, save = [], report._png

    def keep(figure):
        drawn.append([{"title": ax.get_title(), "total": sum(abs(p.get_width()) for p in ax.patches),
                       "bars": {t.get_text(): p.get_width() for t, p in zip(ax.get_yticklabels(), ax.patches)},
                       "texts": [t.get_text().strip() for t in ax.texts]} for ax in figure.axes])
        return save(figure)

    monkeypatch.setattr(report, "_png", keep)
    return drawn


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
