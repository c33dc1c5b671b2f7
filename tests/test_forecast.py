"""The duration forecast: from the run's own first iterations (a warm-up one left out) and, once,
from its first evaluation; the clock is pinned, so the numbers are exact."""
import pytest

import unimatch.forecast as forecast
from unimatch.forecast import DurationForecast


@pytest.fixture
def clock(monkeypatch):
    now = {"t": 0.0}
    monkeypatch.setattr(forecast.time, "perf_counter", lambda: now["t"])
    return now


def test_training_time_is_the_timed_iterations_rate_times_those_left(clock):
    fc = DurationForecast(iterations_left=100, evaluations_left=3, warmup=1, sample=4)
    clock["t"] = 10.0           # the warm-up iteration took 10 s: not counted
    assert fc.iteration_done() is None
    for _ in range(3):
        clock["t"] += 0.5
        assert fc.iteration_done() is None
    clock["t"] += 0.5
    line = fc.iteration_done()  # 4 timed iterations of 0.5 s
    assert fc.sec_per_iter == pytest.approx(0.5)
    assert "training about 50 s" in line and "x 100 iterations left" in line
    assert fc.iteration_done() is None   # said once


def test_first_evaluation_adds_the_remaining_evaluations(clock):
    fc = DurationForecast(iterations_left=10, evaluations_left=3, warmup=1, sample=2)
    for step in range(5):
        clock["t"] += 1.0
        fc.iteration_done()
    assert fc.sec_per_iter == pytest.approx(1.0)
    line = fc.evaluation_done(30.0)
    # 5 of 10 iterations left at 1 s, and 2 more evaluations of 30 s: 65 s
    assert "about 65 s more" in line and "2 more evaluation(s) of 30.0 s" in line
    assert fc.evaluation_done(30.0) is None


def test_a_run_shorter_than_the_sample_still_says_its_time(clock):
    fc = DurationForecast(iterations_left=3, evaluations_left=1, warmup=1, sample=5)
    lines = []
    for _ in range(3):
        clock["t"] += 2.0
        lines.append(fc.iteration_done())
    assert lines[:2] == [None, None] and "training about 6 s" in lines[2]
    assert fc.evaluation_done(1.0) is None   # nothing left to forecast after the only evaluation


def test_an_evaluation_before_the_iterations_were_timed_is_not_counted(clock):
    """A warm-up epoch's evaluation comes before the method's first iteration: the first evaluation
    after the timing is the one that completes the forecast."""
    fc = DurationForecast(iterations_left=4, evaluations_left=2, warmup=1, sample=1)
    assert fc.evaluation_done(5.0) is None
    for _ in range(2):
        clock["t"] += 1.0
        fc.iteration_done()
    assert "about 2 s more" in fc.evaluation_done(0.0)   # 2 iterations left at 1 s, 1 evaluation of 0 s
