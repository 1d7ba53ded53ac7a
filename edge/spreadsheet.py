"""CSV for a person's spreadsheet: every table vqad writes as CSV goes through `SpreadsheetCsv`.

Its text cells come from outside vqad: a camera's id and a part's serial number off the wire,
a reviewer's name, an image's file name. A spreadsheet that opens the file runs a cell that
starts with `=`, `+`, `-` or `@` as a formula (OWASP's "CSV injection"): a part label printed
`=HYPERLINK(...)` would become a link on a quality engineer's screen. Such a cell is written
with a leading apostrophe, which spreadsheets read as "text follows". Numbers are written as
they are, so a negative one stays a number. JSON (`--format json`) keeps every text as it is.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

# What a spreadsheet reads as the start of a formula, or a tab or carriage return before one.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(value: Any) -> Any:
    """`value` as a CSV cell that a spreadsheet shows and does not run: a text starting like a
    formula gets a leading `'`; anything else (numbers, None, other text) is returned as is."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


class SpreadsheetCsv:
    """A CSV table on `stream`: its header row written at once, then `row` for each row. Quoting
    is the csv module's, so a comma, a quote or a line break in a cell keeps the columns."""

    def __init__(self, stream: TextIO, columns: Sequence[str]) -> None:
        self._writer = csv.writer(stream)
        self._writer.writerow(columns)

    def row(self, cells: Iterable[Any]) -> None:
        """One row; None is written as an empty cell."""
        self._writer.writerow([spreadsheet_cell(c) for c in cells])
