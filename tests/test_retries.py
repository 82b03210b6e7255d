"""How long the client waits before asking again (fastio-api.md section 5, README ``--backoff``):
the server's hint in the contract's order (the body's ``retry_after_seconds``, ``Retry-After`` in
seconds or as an HTTP date, the rate window's reset, 60 s for a bare 429), else a backoff that
doubles from ``--backoff``; the jitter around each wait; ``--max-retry-wait`` caps every one."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

from fastio_dl.client.retries import RateGate, RetryPolicy, map_http_error, wait_hint
from fastio_dl.config import Settings
from fastio_dl.errors import ApiError, TransferError

NOW = 1_000_000.0
SAMPLES = 2000  # enough that every sample missing a tenth of the range cannot happen (0.9**2000)


def in_body(value: object) -> dict[str, Any]:
    return {"result": False, "error": {"code": 145858, "params": {"retry_after_seconds": value}}}


def http_date(when: float) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(when))


WINDOW = {"x-ve-limit-expires": str(NOW + 20)}


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        # The body first, in each shape the contract allows; a value it cannot read is passed over.
        ({"Retry-After": "3", **WINDOW}, in_body(7), 7),
        ({}, {"error": {"params": [{"retry_after_seconds": "5"}]}}, 5),
        ({}, {"error": {"params": ["retry_after_seconds", 4]}}, 4),
        ({}, in_body(-3), 0),
        ({"Retry-After": "3"}, in_body("soon"), 3),
        ({"Retry-After": "3"}, {"error": "busy"}, 3),
        # Then Retry-After: seconds, or an HTTP date (one in the past: no wait).
        ({"Retry-After": "3", **WINDOW}, None, 3),
        ({"Retry-After": "2.5"}, None, 2.5),
        ({"Retry-After": http_date(NOW + 12)}, None, 12),
        ({"Retry-After": http_date(NOW - 30)}, None, 0),
        ({"Retry-After": "whenever", **WINDOW}, None, 20),
        # Then the rate window's reset, under either name.
        (WINDOW, None, 20),
        ({"X-Rate-Limit-Expiry": str(NOW + 9)}, None, 9),
        ({"x-ve-limit-expires": "soon", "X-Rate-Limit-Expiry": str(NOW + 9)}, None, 9),
        ({"x-ve-limit-expires": str(NOW - 5)}, None, 0),
        # Nothing said: a minute.
        ({}, None, 60),
    ],
)
def test_a_429_waits_as_the_server_says(
    headers: dict[str, str], body: object, expected: float
) -> None:
    assert wait_hint(429, headers, body, NOW) == expected


def test_only_a_429_gets_the_default_minute() -> None:
    assert wait_hint(503, {}, None, NOW) is None
    assert wait_hint(503, {"Retry-After": "4"}, None, NOW) == 4


def test_the_window_reset_is_a_hint_for_429_only() -> None:
    headers = {"x-ve-limit-expires": str(int(time.time()) + 40)}

    def hint(status: int, headers: dict[str, str]) -> float | None:
        error = map_http_error(status, headers, None, "x")
        assert isinstance(error, ApiError)
        return error.wait_hint

    assert hint(429, headers) == pytest.approx(40, abs=2)
    assert hint(503, headers) is None and hint(500, headers) is None
    # A 503 that names its own Retry-After (RFC 9110) is believed.
    assert hint(503, {"Retry-After": "2"}) == 2


# ----------------------------------------------------------------------------- the policy


def waits(policy: RetryPolicy, attempt: int, hint: float | None = None) -> list[float]:
    """The waits ``policy`` draws after attempt number ``attempt`` failed."""
    error = TransferError("dropped", retryable=True, wait_hint=hint)
    return [policy.wait_after(error, attempt) for _ in range(SAMPLES)]


def assert_spread(values: list[float], low: float, high: float) -> None:
    """Every value in [low, high], and the values cover the range (jitter, not one value)."""
    assert low <= min(values) and max(values) <= high
    tenth = (high - low) / 10
    assert min(values) < low + tenth and max(values) > high - tenth


POLICY = RetryPolicy(retries=9, initial=1.0, max_wait=10.0)


@pytest.mark.parametrize(
    ("attempt", "ceiling"), [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (9, 10.0)]
)
def test_backoff_doubles_up_to_the_cap_with_jitter(attempt: int, ceiling: float) -> None:
    assert_spread(waits(POLICY, attempt), ceiling / 2, ceiling)


@pytest.mark.parametrize(("hint", "low"), [(5.0, 5.0), (0.0, 0.0), (-2.0, 0.0)])
def test_a_hint_is_waited_with_a_little_jitter(hint: float, low: float) -> None:
    # The jitter on a hint is at most a quarter of --backoff, whatever the attempt.
    for attempt in (1, 6):
        assert_spread(waits(POLICY, attempt, hint), low, low + POLICY.initial / 4)


@pytest.mark.parametrize("hint", [9.9, 30.0, 3600.0])
def test_max_retry_wait_caps_a_hint(hint: float) -> None:
    drawn = waits(POLICY, 1, hint)
    assert min(drawn) >= min(hint, POLICY.max_wait) and max(drawn) == POLICY.max_wait


def attempts_of(policy: RetryPolicy, failures: list[BaseException]) -> tuple[list[Any], ...]:
    """Run ``policy`` over an attempt that raises ``failures`` in turn, then returns "done":
    (the attempt numbers seen, the on_retry calls, the result or the error raised)."""
    numbers: list[int] = []
    retries: list[tuple[int, str, float]] = []
    left = list(failures)

    async def attempt(number: int) -> str:
        numbers.append(number)
        if left:
            raise left.pop(0)
        return "done"

    def on_retry(number: int, exc: BaseException, wait: float) -> None:
        retries.append((number, str(exc), wait))

    try:
        outcome: Any = asyncio.run(policy.run(attempt, on_retry))
    except Exception as exc:
        outcome = exc
    return numbers, retries, [outcome]


def test_attempts_are_numbered_on_and_each_retry_is_reported_with_its_wait() -> None:
    policy = RetryPolicy(retries=3, initial=0.002, max_wait=0.01)
    drops = [TransferError(f"drop {n}", retryable=True) for n in (1, 2)]
    numbers, retries, [outcome] = attempts_of(policy, drops)
    assert outcome == "done"
    assert numbers == [1, 2, 3]
    assert [(n, text) for n, text, _ in retries] == [(1, "drop 1"), (2, "drop 2")]
    # The waits follow the backoff: attempt n waits within [ceiling/2, ceiling].
    assert 0.001 <= retries[0][2] <= 0.002 and 0.002 <= retries[1][2] <= 0.004


def test_the_attempts_stop_at_the_retry_cap_with_the_last_error() -> None:
    policy = RetryPolicy(retries=2, initial=0.001, max_wait=0.001)
    drops = [TransferError(f"drop {n}", retryable=True) for n in (1, 2, 3, 4)]
    numbers, retries, [outcome] = attempts_of(policy, drops)
    assert numbers == [1, 2, 3]  # the first attempt and two retries
    assert [n for n, _, _ in retries] == [1, 2]
    assert isinstance(outcome, TransferError) and str(outcome) == "drop 3"


@pytest.mark.parametrize("retries", [0, 3])
def test_an_error_that_is_not_retryable_ends_at_once(retries: int) -> None:
    policy = RetryPolicy(retries=retries, initial=0.001, max_wait=0.001)
    first = TransferError("refused", retryable=False)
    numbers, calls, [outcome] = attempts_of(policy, [first, TransferError("x", retryable=True)])
    assert numbers == [1] and calls == [] and outcome is first
    # A retryable error with no retries left ends at once too.
    numbers, calls, [outcome] = attempts_of(
        RetryPolicy(retries=0, initial=0.001, max_wait=0.001),
        [TransferError("dropped", retryable=True)],
    )
    assert numbers == [1] and calls == [] and str(outcome) == "dropped"


def test_the_policy_comes_from_the_settings() -> None:
    settings = Settings(retries=4, backoff_initial=0.5, max_retry_wait=7.0)
    assert RetryPolicy.from_settings(settings) == RetryPolicy(4, 0.5, 7.0)


# ----------------------------------------------------------------------------- the rate gate


class Clock:
    """A monotonic clock that only an awaited sleep moves."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    from fastio_dl.client import retries

    fake = Clock()
    monkeypatch.setattr(retries, "time", SimpleNamespace(monotonic=lambda: fake.now))
    monkeypatch.setattr(retries, "asyncio", SimpleNamespace(sleep=fake.sleep))
    return fake


@pytest.mark.parametrize(("jitter", "most"), [(0.5, 0.2), (0.05, 0.05)])
def test_the_gate_waits_out_the_longest_hold_with_bounded_jitter(
    clock: Clock, jitter: float, most: float
) -> None:
    # The jitter: at most the gate's own, and at most a tenth of the wait.
    gate = RateGate(jitter=jitter)
    asyncio.run(gate.wait())
    gate.hold(0)
    gate.hold(-1)
    asyncio.run(gate.wait())
    assert clock.slept == [] and gate.holds == 0  # open: no sleep at all
    for _ in range(SAMPLES // 10):
        start = clock.now
        gate.hold(2.0)
        gate.hold(1.0)  # a shorter hold does not shorten the wait
        asyncio.run(gate.wait())
        assert 2.0 <= clock.now - start <= 2.0 + most
    assert len(clock.slept) == SAMPLES // 10
    assert_spread(clock.slept, 2.0, 2.0 + most)
    assert gate.holds == SAMPLES // 5
