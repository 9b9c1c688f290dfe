"""Result rows, their verdicts against the targets, the printed table and the JSON file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Figure", "Row", "Target", "format_table", "write_json"]


@dataclass
class Figure:
    """One implementation's figure for a metric: the median (or, for memory,
    the worst) of its runs, or why there is none."""

    label: str
    value: float | None
    samples: list[float] = field(default_factory=list)
    #: Set when the figure could not be measured ("not available: ...").
    error: str | None = None
    #: How the ratio column names this figure.
    short: str = ""

    def __post_init__(self) -> None:
        self.short = self.short or self.label

    @classmethod
    def missing(cls, label: str, reason: str, short: str = "") -> Figure:
        return cls(label=label, value=None, error=reason, short=short)


@dataclass(frozen=True)
class Target:
    """A goal for granite_storage's figure.

    With ``against`` set, the ratio to that figure (by label; > 1 means
    granite_storage is better) must be at least ``bound``. Without it, the
    figure itself must be at most ``bound`` (lower-is-better metrics) or at
    least ``bound`` (higher-is-better metrics).
    """

    text: str
    bound: float
    against: str | None = None


@dataclass
class Row:
    """One line of the table: a scenario's metric for every implementation."""

    scenario: str
    metric: str
    unit: str
    higher_is_better: bool
    granite: Figure
    baselines: list[Figure] = field(default_factory=list)
    legacy: Figure | None = None
    targets: list[Target] = field(default_factory=list)
    #: Whether the ratio column is meaningful for this metric.
    show_ratios: bool = True
    note: str = ""

    def others(self) -> list[Figure]:
        return [*self.baselines, *([self.legacy] if self.legacy else [])]

    def ratio(self, label: str) -> float | None:
        """granite_storage relative to the figure ``label`` (> 1: granite is better)."""
        other = next((f for f in self.others() if f.label == label), None)
        mine = self.granite.value
        if other is None or other.value is None or mine is None or mine <= 0 or other.value <= 0:
            return None
        return mine / other.value if self.higher_is_better else other.value / mine

    def verdicts(self) -> list[tuple[Target, float | None, bool | None]]:
        """Each target with the number it is judged on and whether it is met
        (``None`` when a figure is missing)."""
        verdicts: list[tuple[Target, float | None, bool | None]] = []
        for target in self.targets:
            if target.against is not None:
                value = self.ratio(target.against)
                passed = None if value is None else value >= target.bound
            else:
                value = self.granite.value
                if value is None:
                    passed = None
                elif self.higher_is_better:
                    passed = value >= target.bound
                else:
                    passed = value <= target.bound
            verdicts.append((target, value, passed))
        return verdicts

    def passed(self) -> bool | None:
        """True if every target is met, False if one is missed, None if not judged."""
        results = [passed for _, _, passed in self.verdicts()]
        if not results:
            return None
        if any(result is False for result in results):
            return False
        if any(result is None for result in results):
            return None
        return True

    def to_json(self) -> dict[str, Any]:
        def figure(f: Figure) -> dict[str, Any]:
            return {"label": f.label, "value": f.value, "samples": f.samples, "error": f.error}

        return {
            "scenario": self.scenario,
            "metric": self.metric,
            "unit": self.unit,
            "higher_is_better": self.higher_is_better,
            "granite_storage": figure(self.granite),
            "baselines": [figure(f) for f in self.baselines],
            "granite_storage_0_1_0": figure(self.legacy) if self.legacy else None,
            "ratios": {f.label: self.ratio(f.label) for f in self.others()},
            "targets": [
                {"target": t.text, "against": t.against, "bound": t.bound, "value": v, "met": p}
                for t, v, p in self.verdicts()
            ],
            "met": self.passed(),
            "note": self.note,
        }


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit in ("MiB/s", "files/s"):
        return f"{value:,.0f} {unit}" if value >= 100 else f"{value:.1f} {unit}"
    if unit == "s":
        return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
    if unit in ("ms", "MiB", "us"):
        return f"{value:,.1f} {unit}"
    return f"{value:g} {unit}"


def _cell(figure: Figure | None, unit: str, *, with_label: bool) -> str:
    if figure is None:
        return "-"
    text = _shorten(figure.error) if figure.error else format_value(figure.value, unit)
    return f"{figure.short}: {text}" if with_label else text


def _shorten(text: str, limit: int = 60) -> str:
    """A table cell's text; the JSON keeps the whole message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _ratio_cell(row: Row) -> str:
    if not row.show_ratios:
        return "-"
    parts = []
    for other in row.others():
        ratio = row.ratio(other.label)
        if ratio is not None:
            parts.append(f"{ratio:.2f}x {other.short}")
    return "; ".join(parts) or "-"


def _result_cell(row: Row) -> str:
    if row.granite.error:
        return "not available"
    passed = row.passed()
    return {True: "met", False: "MISSED", None: "-"}[passed]


HEADER = ("scenario", "metric", "granite_storage", "baseline", "0.1.0", "ratio", "target", "result")


def table_rows(rows: Sequence[Row]) -> list[tuple[str, ...]]:
    lines: list[tuple[str, ...]] = []
    for row in rows:
        lines.append(
            (
                row.scenario,
                row.metric,
                _cell(row.granite, row.unit, with_label=False),
                "; ".join(_cell(f, row.unit, with_label=True) for f in row.baselines) or "-",
                _cell(row.legacy, row.unit, with_label=False),
                _ratio_cell(row),
                "; ".join(t.text for t in row.targets) or "-",
                _result_cell(row),
            )
        )
    return lines


def format_table(rows: Sequence[Row]) -> str:
    """A Markdown-compatible table of ``rows``, with notes below it."""
    lines: list[tuple[str, ...]] = [HEADER, *table_rows(rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]

    def render(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [render(HEADER), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [render(line) for line in lines[1:]]
    notes = [f"- {row.scenario}, {row.metric}: {row.note}" for row in rows if row.note]
    if notes:
        out += ["", "Notes:", *notes]
    return "\n".join(out)


def write_json(path: Path, rows: Sequence[Row], meta: dict[str, Any]) -> None:
    """Write ``meta`` and every row (figures, samples, ratios, verdicts) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {**meta, "rows": [row.to_json() for row in rows]}
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
