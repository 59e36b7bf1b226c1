"""Where to cut an expert trace into a prefix (docs/method.md, "Prefix cut")."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence


def cut_prefix(
    token_ids: Sequence[int],
    ratio: float,
    boundary_ids: Collection[int],
    lookahead: float = 0.3,
) -> int:
    """Number of leading tokens of ``token_ids`` that form the prefix at ``ratio``.

    The threshold is ``k = ⌊ratio·len⌋``. Cutting mid-sentence hands the model a half-finished thought, so
    the prefix instead ends just after the first paragraph-break token (any id in ``boundary_ids``) at an
    index > k, provided that token lies before ``(ratio + lookahead)·len``; otherwise it ends at k.
    ``ratio ≥ 1`` keeps the whole trace, ``ratio ≤ 0`` keeps nothing.
    """
    n = len(token_ids)
    if ratio >= 1.0:
        return n
    if ratio <= 0.0:
        return 0
    k = math.floor(ratio * n + 1e-9)  # ⌊0.7·90⌋ is 63, though 0.7 * 90 == 62.999… in floating point
    limit = (ratio + lookahead) * n
    boundaries = set(boundary_ids)
    for i in range(k + 1, n):
        if i >= limit:
            break
        if token_ids[i] in boundaries:
            return i + 1
    return k
