"""The ``ColumnStats`` contract, checked the same way for every backend's sweep (the
check of ``equipart.testing``, which ``check_backend`` runs).

colsum to a tolerance; colmax exact (to ``colmax_atol``) where the column sum is 0, the only
place the driver reads it, and nowhere above the reference elsewhere (any lower bound of
the exact value, -inf included, satisfies the contract there).
"""

from __future__ import annotations

from equipart.testing import assert_column_stats

__all__ = ["assert_column_stats"]
