"""The one plain-text table every report prints (verify, accuracy, bench)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_table"]


def format_table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns two spaces apart, the first row as the header; one string a row."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
