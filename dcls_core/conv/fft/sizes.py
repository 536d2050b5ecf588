"""Transform sizes for the FFT convolution: exact, and cheap for cuFFT.

An axis of length ``n`` convolved with ``padding`` needs a transform of at least ``m = max(n +
padding, out)`` (see :mod:`.conv`); any larger size is exact too. cuFFT's cost per element is not
monotone in the size (some sizes run in two passes, ``benchmarks/NOTES_layers.md``). So on CUDA
each axis may grow by up to ``MAX_GROWTH`` to a size with the factors 2, 3, 5, 7, and the
combination with the least modelled cost

    cost(L_1..L_d) = prod(L_i) * sum(COST_NS[L_i])

is taken. ``COST_NS`` is the measured time per element and axis of a 2-D real transform and
its inverse at ``L x L`` (``python benchmarks/sweep_fft_sizes.py --table``, NVIDIA H100 80GB
HBM3, torch 2.11 + CUDA 13). Sizes outside the table count as ``DEFAULT_NS``. On the CPU the
smallest exact sizes are used.
"""

from __future__ import annotations

import itertools
import math
from functools import cache
from typing import Sequence

__all__ = ["COST_NS", "DEFAULT_NS", "FFT_PRIMES", "MAX_GROWTH", "fast_fft_size", "modelled_cost", "transform_sizes"]

FFT_PRIMES = (2, 3, 5, 7)
MAX_GROWTH = 1.25
DEFAULT_NS = 0.0100

COST_NS = {
    8: 0.0115,
    9: 0.0117,
    10: 0.0101,
    12: 0.0104,
    14: 0.0098,
    15: 0.0092,
    16: 0.0100,
    18: 0.0095,
    20: 0.0097,
    21: 0.0093,
    24: 0.0098,
    25: 0.0094,
    27: 0.0097,
    28: 0.0096,
    30: 0.0100,
    32: 0.0111,
    35: 0.0104,
    36: 0.0096,
    40: 0.0096,
    42: 0.0101,
    45: 0.0100,
    48: 0.0103,
    49: 0.0096,
    50: 0.0107,
    54: 0.0102,
    56: 0.0099,
    60: 0.0103,
    63: 0.0098,
    64: 0.0096,
    70: 0.0103,
    72: 0.0100,
    75: 0.0182,
    80: 0.0102,
    81: 0.0094,
    84: 0.0103,
    90: 0.0101,
    96: 0.0126,
    98: 0.0159,
    100: 0.0097,
    105: 0.0123,
    108: 0.0096,
    112: 0.0102,
    120: 0.0097,
    125: 0.0097,
    126: 0.0120,
    128: 0.0094,
    135: 0.0124,
    140: 0.0115,
    144: 0.0095,
    147: 0.0183,
    150: 0.0110,
    160: 0.0102,
    162: 0.0129,
    168: 0.0118,
    175: 0.0111,
    180: 0.0117,
    189: 0.0123,
    192: 0.0097,
    196: 0.0122,
    200: 0.0113,
    210: 0.0113,
    216: 0.0095,
    224: 0.0127,
    225: 0.0111,
    240: 0.0114,
    243: 0.0097,
    245: 0.0186,
    250: 0.0118,
    252: 0.0115,
    256: 0.0096,
}


def fast_fft_size(n: int) -> int:
    """Smallest ``m >= n`` whose prime factors are all in (2, 3, 5, 7)."""
    if n < 1:
        raise ValueError(f"fast_fft_size: n must be >= 1, got {n}")
    m = n
    while True:
        rest = m
        for p in FFT_PRIMES:
            while rest % p == 0:
                rest //= p
        if rest == 1:
            return m
        m += 1


def _candidates(m: int) -> list[int]:
    """7-smooth sizes from ``m`` up to ``MAX_GROWTH * m``."""
    out, L = [], fast_fft_size(m)
    while not out or L <= MAX_GROWTH * m:
        out.append(L)
        L = fast_fft_size(L + 1)
    return out


def modelled_cost(sizes: Sequence[int]) -> float:
    """Modelled time of transforming ``sizes`` (arbitrary units)."""
    return math.prod(sizes) * sum(COST_NS.get(L, DEFAULT_NS) for L in sizes)


@cache
def _cheapest(minimal: tuple[int, ...]) -> tuple[int, ...]:
    options = itertools.product(*(_candidates(m) for m in minimal))
    return min(options, key=lambda s: (modelled_cost(s), math.prod(s)))


def transform_sizes(minimal: Sequence[int], device_type: str) -> list[int]:
    """Transform sizes ``>= minimal`` per axis: the cheapest by the cost model on CUDA, the
    smallest 7-smooth ones elsewhere."""
    if device_type == "cuda":
        return list(_cheapest(tuple(int(m) for m in minimal)))
    return [fast_fft_size(int(m)) for m in minimal]
