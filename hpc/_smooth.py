"""TensorBoard's debiased exponential moving average and a terminal sparkline."""
from __future__ import annotations

import math
from typing import List, Sequence

__all__ = ["debiased_ema", "sparkline"]

_BARS = "▁▂▃▄▅▆▇█"


def debiased_ema(values: Sequence[float], weight: float) -> List[float]:
    """TensorBoard's smoothing: ``last = last * w + (1 - w) * v``, divided by ``1 - w ** n`` to remove the
    bias towards the zero start. Non-finite points are passed through and do not disturb the average."""
    if not 0 <= weight < 1:
        raise ValueError("smoothing weight must be in [0, 1)")
    out: List[float] = []
    last = 0.0
    count = 0
    for value in values:
        if not math.isfinite(value):
            out.append(value)
            continue
        last = last * weight + (1 - weight) * value
        count += 1
        debias = 1 - weight ** count if weight > 0 else 1.0
        out.append(last / debias)
    return out


def sparkline(values: Sequence[float], width: int = 60) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return ""
    if len(values) > width:  # average into `width` buckets, so spikes do not vanish by sampling
        buckets: List[float] = []
        for i in range(width):
            chunk = [v for v in values[i * len(values) // width:(i + 1) * len(values) // width]
                     if math.isfinite(v)]
            buckets.append(sum(chunk) / len(chunk) if chunk else math.nan)
        values = buckets
    low, high = min(finite), max(finite)
    span = high - low
    chars = []
    for v in values:
        if not math.isfinite(v):
            chars.append(" ")
        elif span == 0:
            chars.append(_BARS[len(_BARS) // 2])
        else:
            chars.append(_BARS[min(len(_BARS) - 1, int((v - low) / span * len(_BARS)))])
    return "".join(chars)
