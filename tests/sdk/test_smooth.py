import math

import pytest

from hpc._smooth import debiased_ema, sparkline


def test_debiased_ema_matches_tensorboard_by_hand():
    # w = 0.6: last_1 = 0.4*10 = 4, /(1-0.6) = 10; last_2 = 4*0.6 + 0.4*20 = 10.4, /(1-0.36) = 16.25
    assert debiased_ema([10, 20], 0.6) == pytest.approx([10.0, 16.25])
    assert debiased_ema([3, 3, 3], 0.9) == pytest.approx([3, 3, 3])  # a constant stays constant (debiased)
    assert debiased_ema([1, 2, 3], 0.0) == [1, 2, 3]


def test_non_finite_points_pass_through_without_poisoning_the_average():
    out = debiased_ema([1.0, math.nan, 1.0, math.inf], 0.5)
    assert out[0] == 1.0 and math.isnan(out[1]) and out[2] == pytest.approx(1.0) and out[3] == math.inf
    with pytest.raises(ValueError):
        debiased_ema([1], 1.0)


def test_sparkline_spans_min_to_max_and_buckets_long_series():
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert len(sparkline(list(range(1000)), width=40)) == 40
    assert sparkline([math.nan]) == ""
