"""The ``ColumnStats`` contract, checked the same way for every backend's sweep.

colsum to a tolerance; colmax exact (to ``colmax_atol``) where the column sum is 0, the only
place the driver reads it, and nowhere above the reference elsewhere (any lower bound of
the exact value, -inf included, satisfies the contract there).
"""

from __future__ import annotations

import numpy as np


def assert_column_stats(got, ref, *, rtol: float, atol: float, colmax_atol: float) -> None:
    np.testing.assert_allclose(got.colsum, ref.colsum, rtol=rtol, atol=atol)
    guarded = got.colsum == 0.0
    want, have = ref.colmax[guarded], got.colmax[guarded]
    finite = np.isfinite(want)
    assert np.array_equal(want[~finite], have[~finite])
    np.testing.assert_allclose(have[finite], want[finite], rtol=colmax_atol, atol=colmax_atol)
    bound = ref.colmax[~guarded]
    slack = np.where(np.isfinite(bound), colmax_atol * (1 + np.abs(bound)), 0.0)
    assert np.all(got.colmax[~guarded] <= bound + slack)
