"""The parts the per-unit-funnel data cards share (report_symile, report_medfuse, report_cxr_ehr, report_cxr_report):
complementary suppression (``protect`` and the shares and bars that follow it), the funnel of a card's unit (stays,
images, studies, admissions) with its drop reasons and rejects (cells, figure, reject lines, section), the split
table of units and patients, sample thumbnails and the samples and provenance sections.

Same rules as report.py, whose helpers this uses: every count from 1 to 10 shown as "<11", and counts that add up
to a shown total protected so that no suppressed count follows by subtraction from one relation.
"""

from __future__ import annotations

import dataclasses
import html
from typing import Callable, Hashable, Iterable

from beam_pipeline import mimic
from beam_pipeline.report import (DUA_WARNING, HIDDEN, PHI_BANNER, SUPPRESSED, Count, _figure, _png, _pyplot, _section,
                                  _table, drawn, funnel_panels, provenance_tables, rate, sample_records, small,
                                  thumbnail, tick_names, withheld)

ALL_BUT = f"all but {SUPPRESSED}"  # a count whose complement (total - count) is small
SAMPLE_SPLITS = ("val", "test", "train")  # where sample records come from, in that order
REJECT_LINES = "reject lines"  # the key of the reject lines' total among UnitFunnel.cells' cells


# --- complementary suppression --------------------------------------------------------------------------------

def protect(values: dict[Hashable, int], relations: Iterable[Iterable[Hashable]], fixed: Iterable[Hashable] = (),
            rank: Callable[[Hashable], tuple] | None = None, follow: dict[Hashable, Hashable] | None = None
            ) -> dict[Hashable, object]:
    """Cells as shown: counts 1 to 10 become "<11"; then, while a relation (cells of which one is the sum of the
    others) holds exactly one hidden cell, its visible non-zero cell of lowest ``rank`` (default: the smallest) that
    is not ``fixed`` (shown elsewhere on the page) is hidden too, as "suppressed"; a cell that ``follow`` maps to
    another is hidden with it (a split's patients with its units: never more, so shown they would bound a hidden
    count). Others are Counts."""
    relations = [list(r) for r in relations]
    rank = rank or (lambda key: (values[key],))
    fixed = set(fixed)
    followers: dict[Hashable, list[Hashable]] = {}
    for key, leader in (follow or {}).items():
        followers.setdefault(leader, []).append(key)
    hidden: set[Hashable] = set()

    def hide(key: Hashable) -> None:  # with its followers at once, so that their relations count them
        if key not in hidden:
            hidden.add(key)
            for other in followers.get(key, []):
                hide(other)

    for key, v in values.items():
        if small(v):
            hide(key)
    changed = True
    while changed:
        changed = False
        for relation in relations:
            if sum(key in hidden for key in relation) != 1:
                continue
            candidates = [key for key in relation if key not in hidden and key not in fixed and values[key]]
            if candidates:
                hide(min(candidates, key=rank))
                changed = True
    return {key: withheld(v) if key in hidden else Count(v) for key, v in values.items()}


def figure_counts(values: dict[str, int], shown: dict[str, object]) -> dict[str, int]:
    """Bars for histograms_figure: a bar hidden to protect a small one is not drawn and says so (small ones are
    not drawn by report.drawn)."""
    return {f"{name} ({HIDDEN})" if shown[name] == HIDDEN else name: 0 if shown[name] == HIDDEN else n
            for name, n in values.items()}


def _all_but(n: int, total: int) -> bool:
    """A count of all but 1 to 10 of its total (none of a small total is 0, not "all but")."""
    return n > 0 and not small(n) and small(total - n)


def share_bars(values: dict[str, int], total: int) -> dict[str, int]:
    """Bars of counts out of a shown total: one whose complement is small is not drawn and says so."""
    return {f"{name} ({ALL_BUT})" if _all_but(n, total) else name: 0 if _all_but(n, total) else n
            for name, n in values.items()}


def of_total(n: int, total: int) -> list:
    """[count, share of total]: "<11" when the count is small, "all but <11" when total - count is."""
    if small(n):
        return [SUPPRESSED, SUPPRESSED]
    if _all_but(n, total):
        return [ALL_BUT, ALL_BUT]
    return [Count(n), rate(n, total)]


def bars_figure(title: str, counts: dict[str, int]) -> bytes:
    """Horizontal bars in the given order (long names): small counts not drawn, their label says "<11"."""
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(9, 0.6 + 0.22 * len(counts)))
    heights = list(drawn(counts).values())
    ax.barh(tick_names(counts)[::-1], heights[::-1], color="#2e86c1")
    ax.set_xlim(0, max(heights + [1]) * 1.05)
    ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=10)
    return _png(figure)


def shared(cell, n: int, total: int):
    """The share of a cell as shown: hidden with its count."""
    return cell if isinstance(cell, str) else rate(n, total)


# --- the funnel of a card's unit ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class UnitFunnel:
    """A cohort's funnel as its card shows it: metadata.json's funnel steps (units left), each preceded by what
    removed units since the previous one (its drop reasons; before the last step the unit rejects)."""
    noun: str  # the unit in a title: "ICU stay" (the "ICU stay funnel")
    unit: str  # what the funnel counts, plural: "stays"
    one: str  # one unit: "a stay"
    first: str  # the counts key funnel_steps starts from: "stays"
    drops: tuple[str, ...]  # the cohort's drop reasons, in the order they are tested
    funnel_steps: Callable[[dict], list[tuple[str, int]]]  # the cohort's own (counts -> (step, units left))
    unit_stages: tuple[str, ...]  # the reject stages that remove a unit (the others are of rows)
    fixed_first: bool = True  # the first step is shown elsewhere (the inputs' rows), so never hidden
    other_rejects: str = "no (a row)"  # what a reject of another stage is, in the rejects table

    def drop_steps(self) -> dict[str, str]:
        """The funnel step before which each drop reason removes its units, as funnel_steps itself counts it (one
        unit dropped for that reason: the first step with none left)."""
        found = {}
        for reason in self.drops:
            steps = self.funnel_steps({self.first: 1, "dropped": {r: int(r == reason) for r in self.drops},
                                       "matched": 0})
            found[reason] = next(name for name, left in steps if left == 0)
        return found

    def removals(self, metadata: dict, keep: Callable[[str], bool] = lambda reason: True
                 ) -> dict[str, dict[str, int]]:
        """Per funnel step, what removed units since the previous one: its drop reasons (those ``keep`` keeps), and
        before the last step ("written") the unit rejects."""
        counts, steps = metadata["counts"], list(metadata["funnel"])
        last = steps[-1]
        groups: dict[str, dict[str, int]] = {step: {} for step in steps[1:]}
        for reason, step in self.drop_steps().items():
            if keep(reason):
                groups[step if step in groups else last][f"dropped: {reason}"] = counts["dropped"].get(reason, 0)
        groups[last].update({f"rejected: {reason}": n for reason, n in counts["rejected_by_reason"].items()})
        return groups

    def reject_key(self, reason: str) -> str:
        """A reject line count's key in cells: a unit reject is the funnel's own "− rejected: ..." cell."""
        return f"− rejected: {reason}" if reason.startswith(self.unit_stages) else f"reject line: {reason}"

    def cells(self, metadata: dict, groups: dict[str, dict[str, int]]) -> tuple[list[tuple[str, int]], dict]:
        """The funnel as (name, count) rows, each step preceded by its removals (``groups``, "− " names), and the
        cells as shown, with the reject lines by stage/reason (reject_key) and their total (REJECT_LINES), which
        share the unit rejects. Relations: each step = the next + the removals between them; the reject lines add
        up to their total. "written" is fixed (the page header shows it), so is the first step when
        ``fixed_first``. Preferred to hide: a removal (smallest first), then the earliest step."""
        rows, relations = [], []
        steps = list(metadata["funnel"].items())
        for i, (step, left) in enumerate(steps):
            group = groups.get(step, {})
            rows += [(f"− {name}", n) for name, n in group.items()]
            rows.append((step, left))
            if i:
                relations.append([steps[i - 1][0], step, *(f"− {name}" for name in group)])
        counts = metadata["counts"]
        lines = {self.reject_key(reason): n for reason, n in counts["rejects_by_stage_reason"].items()}
        values = {**lines, REJECT_LINES: counts["rejects_total"], **dict(rows)}
        relations.append([*lines, REJECT_LINES])
        order = {name: i for i, (name, _) in enumerate(steps)}
        fixed = [steps[0][0], steps[-1][0]] if self.fixed_first else [steps[-1][0]]
        shown = protect(values, relations, fixed=fixed,
                        rank=lambda key: (1, order[key]) if key in order else (0, values[key]))
        return rows, shown

    def figure(self, metadata: dict, groups: dict[str, dict[str, int]]) -> bytes:
        """Left: the steps, right: the removals by reason, each bar as the table shows it (report.funnel_panels)."""
        rows, shown = self.cells(metadata, groups)
        return funnel_panels([(name, n, shown[name]) for name, n in rows if not name.startswith("− ")],
                             [(name[2:], n, shown[name]) for name, n in rows if name.startswith("− ")],
                             (f"{self.title} ({self.unit} left)",
                              f"{self.unit.capitalize()} dropped or rejected, by reason"))

    @property
    def title(self) -> str:
        return f"{self.noun[0].upper()}{self.noun[1:]} funnel"

    def rejects_part(self, rows: list[list], intro: str = "A line each in rejects/.") -> str:
        """The reject lines by stage/reason (``rows``: name, whether it removes a unit, lines as shown), saying
        which stages remove a unit."""
        stages = self.unit_stages
        named = f"{', '.join(stages[:-1])} and {stages[-1]}" if len(stages) > 1 else stages[0]
        return (f"<h3>Rejects written (all stages)</h3><p>{intro} Only {named} rejects remove {self.one} (the "
                "funnel's rejected rows).</p>" +
                _table(["stage/reason", f"removes {self.one}", "lines"], rows, "rejects"))

    def section(self, metadata: dict, groups: dict[str, dict[str, int]], intro: str) -> str:
        """The funnel section: ``intro``, the funnel table, its figure (funnel.png) and the reject lines, each
        cell as protected together."""
        rows, shown = self.cells(metadata, groups)
        rejects = metadata["counts"]["rejects_by_stage_reason"]
        reject_rows = [[name, "yes" if name.startswith(self.unit_stages) else self.other_rejects,
                        shown[self.reject_key(name)]] for name in rejects] + [["total", "", shown[REJECT_LINES]]]
        return _section("funnel", self.title, intro,
                        _table(["step", self.unit], [[name, shown[name]] for name, _ in rows], "funnel"),
                        _figure("funnel.png", f"{self.noun} funnel"), self.rejects_part(reject_rows))


# --- splits ----------------------------------------------------------------------------------------------------

def split_columns(metadata: dict, unit: str, more: dict[str, dict[str, int]] | None = None
                  ) -> dict[str, dict[str, int]]:
    """Column -> split -> count: the units (``unit``: "images"), the ``more`` columns (distinct studies, X-ray
    images, ECGs per split), then the patients."""
    counts = metadata["counts"]
    return {unit: counts["per_split"], **(more or {}), "patients": counts["patients_per_split"]}


def split_cells(metadata: dict, unit: str, more: dict[str, dict[str, int]] | None = None) -> dict:
    """The split_columns per split and in total, as shown: keys (column, split or "total"). Each column adds up to
    its total (splits are patient-disjoint, so patients and what belongs to one patient too); the written units
    are fixed. A split whose units are hidden has its other cells hidden too: no more of them than of its units
    (patients, studies, X-rays), shown they would bound the hidden count (or equal it)."""
    values = {}
    columns = split_columns(metadata, unit, more)
    for column, per_split in columns.items():
        for split in mimic.SPLITS:
            values[(column, split)] = per_split.get(split, 0)
        values[(column, "total")] = sum(values[(column, s)] for s in mimic.SPLITS)
    relations = [[(column, s) for s in ("total", *mimic.SPLITS)] for column in columns]
    follow = {(column, s): (unit, s) for column in columns if column != unit for s in mimic.SPLITS}
    return protect(values, relations, fixed=[(unit, "total")], follow=follow)


def split_rows(metadata: dict, unit: str, more: dict[str, dict[str, int]] | None = None) -> list[list]:
    """The split table: per split and in total, a cell per split_columns column."""
    shown = split_cells(metadata, unit, more)
    columns = split_columns(metadata, unit, more)
    return [[split, *(shown[(column, split)] for column in columns)] for split in (*mimic.SPLITS, "total")]


def hidden_splits(metadata: dict, unit: str) -> dict[str, str]:
    """Split -> its units as the split table shows them ("<11" or "suppressed"), for the splits whose count that
    hides. A card shows every other count of such a split so too: their sum or their equal would show it (a split's
    label, age or view counts add up to its images; symile's val queries are its admissions)."""
    shown = split_cells(metadata, unit)
    return {split: shown[(unit, split)] for split in mimic.SPLITS if isinstance(shown[(unit, split)], str)}


# --- dataset, samples, provenance ------------------------------------------------------------------------------

def images_written(metadata: dict) -> str:
    """The dataset table's "images written" cell."""
    image = metadata["image"]
    return f"yes: {image['size']} px {image['format']}, {image['resize_mode']}" if image else "no"


def split_line(metadata: dict) -> str:
    """The dataset table's "split" cell: the strategy and its rule."""
    split = metadata.get("split")
    return f"{split['strategy']}: {split['rule']}" if split else metadata["config"].get("split_strategy", "")


def sample_thumbnails(folder: str, metadata: dict, samples: int, splits: tuple[str, ...] = SAMPLE_SPLITS
                      ) -> tuple[list[dict], list[str], dict[str, bytes]]:
    """``samples`` records of ``splits`` (none when 0), their thumbnails' names ("" for a record without an image)
    and the thumbnails by name."""
    picked = sample_records(folder, metadata, samples, splits) if samples > 0 else []
    names = [f"sample-{i:02d}.png" if example.get("image/encoded") else "" for i, example in enumerate(picked)]
    return picked, names, {name: thumbnail(example["image/encoded"][0]) for name, example in zip(names, picked)
                           if name}


def no_samples(absent: str, adds: str) -> str:
    """The samples section of an aggregate-only page: what record-level content it does not show (``absent``) and
    what ``--samples N`` adds."""
    return (f"<p>Aggregate only: {absent} on this page. <code>python -m beam_pipeline.report OUTPUT --samples N"
            f"</code> adds {adds}, and marks the page \"{PHI_BANNER.lower()}\".</p>")


def xray(name: str, dicom_id: str, missing: str = "<p>no image</p>") -> str:
    """A sample card's X-ray thumbnail (``name``), or ``missing`` when the record has none ("")."""
    return f'<img src="{name}" alt="sample X-ray {html.escape(dicom_id)}">' if name else missing


def samples_section(picked: list, cards: str) -> str:
    return _section("samples", f"Sample records ({len(picked)})", DUA_WARNING, cards)


def provenance_section(metadata: dict, *parts: str) -> str:
    """Config, versions and inputs, then ``parts``, then the image settings."""
    images = (_table(["setting", "value"], [[k, str(v)] for k, v in metadata["image"].items()], "image")
              if metadata["image"] else "<p>No images written.</p>")
    return _section("provenance", "Config, versions and inputs", *provenance_tables(metadata), *parts,
                    "<h3>Images</h3>" + images)
