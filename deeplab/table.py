"""Plain-text tables, the one formatter behind every table the commands print."""

from __future__ import annotations

from collections.abc import Sequence


def text_table(
    header: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    right: Sequence[int] = (),
    rule: bool = True,
    footer: Sequence[str] = (),
) -> str:
    """Columns padded to their widest cell, with a rule of dashes under the header.

    ``right``: indices of right-aligned (numeric) columns; ``footer``: lines appended as is.
    """
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        padded = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in
                  enumerate(zip(row, widths, strict=True))]  # fmt: skip
        return "  ".join(padded).rstrip()

    lines = [line(cells[0])] + (["  ".join("-" * w for w in widths)] if rule else [])
    lines += [line(row) for row in cells[1:]]
    return "\n".join([*lines, *footer])
