"""Restart policies as values: ``Backoff`` and ``RestartIntensity``."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessions import Backoff, RestartIntensity

initials = st.floats(min_value=0.0, max_value=100.0, allow_nan=False)
maxima = st.floats(min_value=0.0, max_value=1000.0, allow_nan=False)
multipliers = st.floats(min_value=1.0, max_value=10.0, allow_nan=False)
jitters = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
attempts = st.integers(min_value=1, max_value=60)

# -- Backoff --------------------------------------------------------------------------


def test_backoff_defaults() -> None:
    """The defaults match the config defaults (0.1 s doubling to 30 s, 10 % jitter)."""
    assert Backoff() == Backoff(initial=0.1, max=30.0, multiplier=2.0, jitter=0.1)


def test_backoff_sequence_without_jitter() -> None:
    """``initial * multiplier**(n-1)``, capped at ``max``, exactly when jitter is 0."""
    backoff = Backoff(initial=0.1, max=30.0, multiplier=2.0, jitter=0.0)
    times = [backoff.get_backoff_time(n) for n in range(1, 13)]
    expected = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0, 30.0]
    assert times == pytest.approx(expected)
    assert times[9:] == [30.0, 30.0, 30.0]


def test_backoff_constant() -> None:
    """A multiplier of 1 gives the same delay every time."""
    backoff = Backoff(initial=0.5, max=30.0, multiplier=1.0, jitter=0.0)
    assert {backoff.get_backoff_time(n) for n in range(1, 50)} == {0.5}


def test_backoff_max_below_initial() -> None:
    """``max`` caps even the first delay."""
    assert Backoff(initial=5.0, max=1.0, multiplier=2.0, jitter=0.0).get_backoff_time(1) == 1.0


def test_backoff_zero_jitter_ignores_rng() -> None:
    """With no jitter the rng is not consulted and the result is exact."""

    class Exploding(random.Random):
        def uniform(self, a: float, b: float) -> float:
            raise AssertionError("rng used although jitter is 0")

    backoff = Backoff(initial=0.25, max=10.0, multiplier=3.0, jitter=0.0)
    assert backoff.get_backoff_time(3, Exploding()) == 0.25 * 9


@given(initial=initials, maximum=maxima, multiplier=multipliers, n=attempts)
def test_backoff_formula(initial: float, maximum: float, multiplier: float, n: int) -> None:
    """Without jitter the delay is exactly ``min(max, initial * multiplier**(n-1))``."""
    backoff = Backoff(initial=initial, max=maximum, multiplier=multiplier, jitter=0.0)
    assert backoff.get_backoff_time(n) == min(maximum, initial * multiplier ** (n - 1))


@given(initial=initials, maximum=maxima, multiplier=multipliers, n=attempts)
def test_backoff_monotone_and_capped(
    initial: float, maximum: float, multiplier: float, n: int
) -> None:
    """Without jitter the delay never decreases with the attempt and never exceeds max."""
    backoff = Backoff(initial=initial, max=maximum, multiplier=multiplier, jitter=0.0)
    now, after = backoff.get_backoff_time(n), backoff.get_backoff_time(n + 1)
    assert 0.0 <= now <= after <= maximum


@given(
    initial=initials,
    maximum=maxima,
    multiplier=multipliers,
    jitter=jitters,
    n=attempts,
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_backoff_jitter_bounds_property(
    *, initial: float, maximum: float, multiplier: float, jitter: float, n: int, seed: int
) -> None:
    """With jitter the delay stays within +/- jitter of the base and is never negative."""
    base = Backoff(initial, maximum, multiplier, 0.0).get_backoff_time(n)
    delay = Backoff(initial, maximum, multiplier, jitter).get_backoff_time(n, random.Random(seed))
    assert delay >= 0.0
    assert base * (1 - jitter) - 1e-9 <= delay <= base * (1 + jitter) + 1e-9


@pytest.mark.parametrize("jitter", [0.1, 0.5, 1.0])
def test_backoff_jitter_bounds_many_draws(jitter: float) -> None:
    """Over many seeded draws every delay is within +/- jitter and both sides occur."""
    rng = random.Random(20240611)
    backoff = Backoff(initial=1.0, max=8.0, multiplier=2.0, jitter=jitter)
    for n in (1, 3, 10):
        base = min(8.0, 2.0 ** (n - 1))
        draws = [backoff.get_backoff_time(n, rng) for _ in range(2000)]
        assert all(d >= 0.0 for d in draws)
        assert all(base * (1 - jitter) <= d <= base * (1 + jitter) for d in draws)
        assert any(d < base for d in draws)
        assert any(d > base for d in draws)


def test_backoff_seeded_rng_is_reproducible() -> None:
    """The same seed gives the same delays (tests can pin the jitter)."""
    backoff = Backoff(initial=0.5, max=30.0, multiplier=2.0, jitter=0.3)
    first = [backoff.get_backoff_time(n, random.Random(7)) for n in range(1, 20)]
    second = [backoff.get_backoff_time(n, random.Random(7)) for n in range(1, 20)]
    assert first == second


def test_backoff_without_rng_uses_global_random() -> None:
    """Without an rng the module-level random is used, within the same bounds."""
    backoff = Backoff(initial=2.0, max=30.0, multiplier=2.0, jitter=0.25)
    for _ in range(200):
        assert 1.5 <= backoff.get_backoff_time(1) <= 2.5


@pytest.mark.parametrize("attempt", [0, -1, -100])
def test_backoff_attempt_below_one(attempt: int) -> None:
    """Attempts are counted from 1; anything lower is a ValueError naming the value."""
    with pytest.raises(ValueError, match=str(attempt)):
        Backoff().get_backoff_time(attempt)


@given(st.integers(max_value=0))
def test_backoff_attempt_below_one_property(attempt: int) -> None:
    """Every attempt < 1 is refused, with or without jitter."""
    for backoff in (Backoff(), Backoff(jitter=0.0)):
        with pytest.raises(ValueError):
            backoff.get_backoff_time(attempt, random.Random(0))


def test_backoff_many_consecutive_failures_stays_at_max() -> None:
    """After very many consecutive failures the delay is still just ``max``."""
    backoff = Backoff(initial=0.1, max=30.0, multiplier=2.0, jitter=0.0)
    assert backoff.get_backoff_time(1025) == 30.0
    assert backoff.get_backoff_time(100_000) == 30.0


def test_backoff_is_frozen_value() -> None:
    """Backoff is immutable, hashable and compared by value."""
    backoff = Backoff(initial=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        backoff.initial = 2.0  # type: ignore[misc]
    assert backoff == Backoff(initial=1.0)
    assert hash(backoff) == hash(Backoff(initial=1.0))
    assert dataclasses.replace(backoff, max=5.0).max == 5.0
    assert backoff.max == 30.0


# -- RestartIntensity -----------------------------------------------------------------


def test_intensity_defaults() -> None:
    """The defaults match the config defaults: 3 restarts in 5 s, empty history."""
    assert RestartIntensity() == RestartIntensity(max_restarts=3, period=5.0, history=())
    assert not RestartIntensity().is_exhausted()


def test_intensity_increment_returns_new_value() -> None:
    """``increment`` leaves the original untouched and returns a new value."""
    original = RestartIntensity(max_restarts=3, period=5.0)
    after = original.increment(100.0)
    assert after is not original
    assert original.history == ()
    assert after.history == (100.0,)
    assert (after.max_restarts, after.period) == (3, 5.0)


def test_intensity_history_kept_in_order() -> None:
    """Restarts inside the window are kept, oldest first."""
    intensity = RestartIntensity(max_restarts=10, period=5.0)
    for t in (1.0, 2.0, 2.5, 4.0):
        intensity = intensity.increment(t)
    assert intensity.history == (1.0, 2.0, 2.5, 4.0)


def test_intensity_drops_entries_outside_window() -> None:
    """Entries ``period`` or more seconds old are dropped at the next increment."""
    intensity = RestartIntensity(max_restarts=10, period=5.0)
    for t in (0.0, 1.0, 3.0):
        intensity = intensity.increment(t)
    assert intensity.increment(5.0).history == (1.0, 3.0, 5.0)
    assert intensity.increment(4.9).history == (0.0, 1.0, 3.0, 4.9)
    assert intensity.increment(8.5).history == (8.5,)
    assert intensity.increment(100.0).history == (100.0,)


def test_intensity_exhausted_only_beyond_max() -> None:
    """Exactly ``max_restarts`` restarts in the window is allowed; one more exhausts."""
    intensity = RestartIntensity(max_restarts=3, period=5.0)
    for t in (0.0, 1.0, 2.0):
        intensity = intensity.increment(t)
        assert not intensity.is_exhausted()
    assert intensity.increment(3.0).is_exhausted()
    assert not intensity.increment(5.5).is_exhausted()  # 0.0 has left the window


def test_intensity_zero_restarts() -> None:
    """``max_restarts = 0``: the first restart already exhausts."""
    intensity = RestartIntensity(max_restarts=0, period=1.0)
    assert not intensity.is_exhausted()
    assert intensity.increment(0.0).is_exhausted()


def test_intensity_spread_out_restarts_never_exhaust() -> None:
    """Restarts further apart than ``period`` never add up."""
    intensity = RestartIntensity(max_restarts=1, period=2.0)
    for t in range(0, 200, 2):
        intensity = intensity.increment(float(t))
        assert not intensity.is_exhausted()
        assert intensity.history == (float(t),)


def test_intensity_reset() -> None:
    """``reset`` gives an empty history with the same limits; the original is unchanged."""
    intensity = RestartIntensity(max_restarts=1, period=10.0).increment(1.0).increment(2.0)
    assert intensity.is_exhausted()
    fresh = intensity.reset()
    assert fresh.history == ()
    assert not fresh.is_exhausted()
    assert (fresh.max_restarts, fresh.period) == (1, 10.0)
    assert intensity.history == (1.0, 2.0)


def test_intensity_is_frozen_value() -> None:
    """RestartIntensity is immutable, hashable and compared by value (history included)."""
    intensity = RestartIntensity().increment(1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        intensity.history = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        intensity.max_restarts = 9  # type: ignore[misc]
    assert intensity == RestartIntensity().increment(1.0)
    assert intensity != RestartIntensity()
    assert hash(intensity) == hash(RestartIntensity(history=(1.0,)))


@given(
    max_restarts=st.integers(min_value=0, max_value=20),
    period=st.floats(min_value=0.001, max_value=100.0, allow_nan=False),
    gaps=st.lists(st.floats(min_value=0.0, max_value=50.0, allow_nan=False), max_size=40),
)
def test_intensity_window_model(max_restarts: int, period: float, gaps: list[float]) -> None:
    """After any run of restarts the history is exactly those less than ``period`` before
    the last, and exhaustion means more than ``max_restarts`` of them."""
    times: list[float] = []
    now = 1000.0
    intensity = RestartIntensity(max_restarts=max_restarts, period=period)
    for gap in gaps:
        now += gap
        times.append(now)
        previous = intensity
        intensity = intensity.increment(now)
        assert intensity is not previous
        window = tuple(t for t in times if now - t < period)
        assert intensity.history == window
        assert intensity.is_exhausted() == (len(window) > max_restarts)
        assert intensity.reset().history == ()
