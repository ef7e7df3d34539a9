"""Versions as intervals of Stripe's clock, and the clock that bounds them (syncd.versions,
syncd.stripe_api.StripeClock): the bounds must always hold Stripe's true time, and narrow."""

from __future__ import annotations

import random
from email.utils import formatdate

import pytest

from syncd.stripe_api import StripeClock
from syncd.versions import Version


def test_ordering_of_intervals() -> None:
    a = Version(100.0, 101.0)
    assert Version(101.0, 102.0).newer_than(a)  # begins as `a` ends
    assert not Version(100.5, 102.0).newer_than(a)  # overlaps: unknown
    assert not a.newer_than(Version(100.5, 102.0))
    assert Version.of_event(7) == Version(7.0, 8.0)
    assert Version(1.0, 2.0).spanning(Version(1.5, 3.0)) == Version(1.0, 3.0)
    with pytest.raises(ValueError):
        Version(2.0, 1.0)


def answer(
    clock: StripeClock, true_offset: float, local: float, rtt: float
) -> tuple[Version, float]:
    """One request sent at `local`, answered after `rtt`, Stripe's clock = local + true_offset;
    Stripe writes the Date header at a random moment while the request is in flight."""
    written = local + random.uniform(0, rtt) + true_offset
    header = formatdate(written, usegmt=True)
    earliest = clock.earliest(local)
    written_before = clock.observe(header, local, local + rtt)
    return clock.version(local, earliest, local + rtt, written_before), written


def test_the_clock_bounds_always_hold_stripes_time_and_narrow() -> None:
    random.seed(7)
    clock = StripeClock()
    true_offset = 1_700_000_000.123 - 5000.0  # Stripe's time minus our monotonic time
    local = 5000.0
    widths = []
    for _ in range(400):
        rtt = random.uniform(0.002, 0.2)
        v, written = answer(clock, true_offset, local, rtt)
        # Stripe read the content after the request left and before it wrote the answer.
        assert v.earliest <= local + true_offset
        assert v.latest >= written
        assert clock.low <= true_offset <= clock.high
        widths.append(clock.high - clock.low)
        local += random.uniform(0.05, 1.5)
    assert widths[0] > 1.0  # one header: its whole second, plus the round trip
    assert widths[-1] < 0.25  # many: about one round trip


def test_a_clock_that_jumps_starts_the_band_again() -> None:
    clock = StripeClock()
    local = 100.0
    for _ in range(20):
        answer(clock, 1_700_000_000.0, local, 0.01)
        local += 0.37
    # Stripe's clock (an emulator's, in tests) moves forward by a day while a request is out:
    # the answer's version still begins before the jump (it may have been read before it).
    sent_before_jump = clock.earliest(local)
    v, _ = answer(clock, 1_700_086_400.0, local, 0.01)
    assert clock.low <= 1_700_086_400.0 <= clock.high
    assert v.earliest == sent_before_jump < 1_700_000_000.0 + local
