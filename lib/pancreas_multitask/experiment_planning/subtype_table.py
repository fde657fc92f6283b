"""The per-case subtype table (``subtypes.csv`` beside dataset.json): the only source of class labels."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterable, Sequence

from ..io import update_text

SUBTYPE_TABLE = "subtypes.csv"
COLUMNS = ("case_id", "subtype", "subtype_name", "split")


def write_subtype_table(path: Path, rows: Iterable[tuple[str, int, str]], subtypes: Sequence[str]) -> bool:
    """Write ``(case_id, subtype index, split)`` rows, sorted by case id, unless unchanged; True if it wrote."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for case_id, subtype, split in sorted(rows):
        writer.writerow((case_id, subtype, subtypes[subtype], split))
    return update_text(path, buffer.getvalue())


def read_subtype_table(path: Path, n_classes: int | None = None) -> dict[str, tuple[int, str]]:
    """``{case_id: (subtype, split)}``; a malformed row raises ValueError naming the file and line."""
    table: dict[str, tuple[int, str]] = {}
    with Path(path).open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not set(COLUMNS) <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected columns {list(COLUMNS)}, got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            try:
                subtype = int(row["subtype"])
            except ValueError:
                raise ValueError(f"{path}:{line}: subtype {row['subtype']!r} is not an integer") from None
            if subtype < 0 or (n_classes is not None and subtype >= n_classes):
                raise ValueError(f"{path}:{line}: subtype {subtype} outside 0..{(n_classes or 1) - 1}")
            if row["case_id"] in table:
                raise ValueError(f"{path}:{line}: duplicate case id {row['case_id']}")
            table[row["case_id"]] = (subtype, row["split"])
    return table
