"""Output checks: served rows come back unit-norm; an item with a non-finite value or a pooled
norm outside the bounds is refused with its reason; a model error passes through."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from ops.settings import Settings
from workers.outcomes import Checked, check


def test_each_item_is_served_or_refused_on_its_own_rows() -> None:
    cfg = Settings()
    rng = np.random.default_rng(0)
    ok = rng.normal(size=(2, 8)).astype(np.float32)  # an item with two texts
    nan = rng.normal(size=(1, 8)).astype(np.float32)
    nan[0, 3] = np.nan
    huge = np.full((1, 8), 1e6, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refusing a row is not a numpy warning
        out = check([ok, "RuntimeError: boom", nan, huge], cfg)
    served = out[0]
    assert isinstance(served, Checked) and served.vectors is not None
    assert served.vectors.dtype == np.float32 and served.vectors.shape == (2, 8)
    assert np.allclose(np.linalg.norm(served.vectors, axis=1), 1.0, atol=1e-6)
    assert np.allclose(served.vectors, ok / np.linalg.norm(ok, axis=1, keepdims=True), atol=1e-6)
    assert out[1] == "RuntimeError: boom"
    assert isinstance(out[2], Checked) and out[2].vectors is None
    assert out[2].violation == "non_finite"
    assert isinstance(out[3], Checked) and out[3].violation == "norm_out_of_bounds"
    assert out[3].message == (f"pooled embedding norm {np.sqrt(8) * 1e6:.4g} outside "
                              f"[{cfg.safety_norm_min}, {cfg.safety_norm_max}]")


@pytest.mark.parametrize("values", [[], ["ValueError: x"]])
def test_nothing_to_check_passes_through(values: list) -> None:
    assert check(values, Settings()) == values
