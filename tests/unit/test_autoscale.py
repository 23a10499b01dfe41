"""The autoscaler's decision rule: grow on sustained depth, shrink after a cooldown."""

from __future__ import annotations

from picscale.worker.autoscale import Policy


def policy() -> Policy:
    return Policy(minimum=1, maximum=4, jobs_per_worker=10, up_samples=2, cooldown_seconds=5)


def test_grows_only_when_the_depth_lasts_and_never_past_max() -> None:
    p = policy()
    assert p.decide(1, 35, now=0) == 1  # one reading is a blip
    assert p.decide(1, 35, now=1) == 4  # two in a row: ceil(35 / 10) workers
    p = policy()
    p.decide(1, 500, now=0)
    assert p.decide(1, 500, now=1) == 4  # capped at MAX
    p = policy()
    p.decide(1, 35, now=0)
    assert p.decide(1, 5, now=1) == 1  # the burst was gone: the count starts again
    assert p.decide(1, 35, now=2) == 1


def test_shrinks_one_step_per_cooldown_down_to_min() -> None:
    p = policy()
    assert p.decide(4, 0, now=0) == 4
    assert p.decide(4, 0, now=4.9) == 4  # hysteresis: not before the cooldown
    assert p.decide(4, 0, now=5) == 3
    assert p.decide(3, 0, now=6) == 3
    assert p.decide(3, 0, now=10) == 2
    assert p.decide(2, 0, now=15) == 1
    assert p.decide(1, 0, now=100) == 1  # never below MIN
    assert p.decide(0, 0, now=101) == 1  # a dead worker is replaced at once


def test_work_arriving_during_the_cooldown_cancels_it() -> None:
    p = policy()
    p.decide(4, 0, now=0)
    assert p.decide(4, 40, now=3) == 4  # wanted 4 again
    assert p.decide(4, 0, now=6) == 4  # the cooldown starts over
    assert p.decide(4, 0, now=11) == 3
