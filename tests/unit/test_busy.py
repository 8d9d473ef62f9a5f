"""The busy ratio: seconds inside forwards over the last window ÷ the window's wall seconds."""

from __future__ import annotations

import pytest

from workers.busy import BusyMeter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_ratio_counts_forwards_inside_the_window_only() -> None:
    clock = Clock()
    meter = BusyMeter(window=10.0, clock=clock)
    clock.now = 4.0
    assert meter.ratio() == 0.0
    meter.add(1.0, 3.0)  # 2 s busy of 4 s lived
    assert meter.ratio() == pytest.approx(0.5)
    clock.now = 10.0
    meter.add(4.0, 10.0)  # 8 s busy of 10
    assert meter.ratio() == pytest.approx(0.8)
    clock.now = 12.0  # the window is now [2, 12]: 1 s of the first forward, all of the second
    assert meter.ratio() == pytest.approx(7.0 / 10.0)
    clock.now = 30.0  # nothing in [20, 30]
    assert meter.ratio() == 0.0
    assert not meter._spans
