"""Band-limited resampling between integer sampling rates in plain torch (windowed sinc, polyphase).

The values equal ``torchaudio.functional.resample`` with its defaults (Hann-windowed sinc,
``lowpass_filter_width=6``, ``rolloff=0.99``) up to floating-point rounding. The length is
``ceil(S * new / orig)`` computed exactly (torchaudio computes it in floating point and can give
one sample less).

Method: with ``g = gcd(orig_freq, new_freq)``, ``L = orig_freq / g`` and ``M = new_freq / g``,
output sample ``j = q * M + p`` sits at input time ``q * L + p * L / M``. It is the sum of the
input samples within ``width`` input periods, weighted by an ideal low-pass filter of cutoff
``rolloff * min(L, M) / L`` times the input Nyquist frequency, tapered by a Hann window that
reaches zero at ``lowpass_filter_width`` zero crossings. The ``M`` phases ``p`` each have their
own filter of ``2 * width + L`` taps, so the whole resampling is one ``conv1d`` with ``M``
output channels and stride ``L`` over the zero-padded input, whose channels are then
interleaved in time.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

__all__ = ["MAX_KERNEL_ELEMENTS", "filter_width", "resample", "resample_kernel"]

#: Above this many polyphase filter values (``M * (2 * width + L)``, for rates whose reduced ratio
#: ``L / M`` is large: 7999 -> 32000 Hz would need 2.6e8) the output is computed by a gather of
#: the ``2 * width + 1`` input samples around each output instant instead of one conv1d.
MAX_KERNEL_ELEMENTS = 1 << 22
_GATHER_CHUNK = 1 << 15  # output samples per gather step (bounds its memory)


def _positive_rate(value: float, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or int(value) != value:
        raise ValueError(f"resample: {name} must be a positive integer sampling rate, got {value!r}")
    return int(value)


def _scale_and_width(orig: int, new: int, lowpass_filter_width: int, rolloff: float) -> tuple[float, int]:
    """For reduced rates: the filter's cutoff per input sample (zero crossings per input period)
    and the input samples it reaches on each side of an output instant."""
    cutoff = min(orig, new) * rolloff  # in units of the reduced rates: input Nyquist is orig / 2
    return cutoff / orig, math.ceil(lowpass_filter_width * orig / cutoff)


def _windowed_sinc(distance: torch.Tensor, scale: float, lowpass_filter_width: int) -> torch.Tensor:
    """Filter weights at ``distance`` input samples from an output instant (float64)."""
    t = distance * scale  # in zero crossings of the filter
    window = torch.where(
        t.abs() <= lowpass_filter_width, torch.cos(t * (math.pi / (2 * lowpass_filter_width))) ** 2, 0.0
    )
    return torch.sinc(t) * window * scale


@lru_cache(maxsize=8)
def _kernel64(orig: int, new: int, lowpass_filter_width: int, rolloff: float) -> tuple[torch.Tensor, int]:
    """Float64 polyphase filters ``(new, 1, 2 * width + orig)`` for reduced rates, and ``width``."""
    scale, width = _scale_and_width(orig, new, lowpass_filter_width, rolloff)
    taps = torch.arange(-width, width + orig, dtype=torch.float64)  # input offsets from q * L
    phases = torch.arange(new, dtype=torch.float64)[:, None] * (orig / new)  # output offsets p * L / M
    kernel = _windowed_sinc(taps[None, :] - phases, scale, lowpass_filter_width)  # (new, taps)
    return kernel[:, None, :], width


def _check_filter(lowpass_filter_width: int, rolloff: float) -> None:
    if lowpass_filter_width < 1 or int(lowpass_filter_width) != lowpass_filter_width:
        raise ValueError(f"resample: lowpass_filter_width must be a positive integer, got {lowpass_filter_width!r}")
    if not 0.0 < rolloff <= 1.0:
        raise ValueError(f"resample: rolloff must lie in (0, 1], got {rolloff!r}")


def filter_width(orig_freq: int, new_freq: int, lowpass_filter_width: int = 6, rolloff: float = 0.99) -> int:
    """Input samples on each side of an output instant that the filter reaches (no filter is built)."""
    orig, new = _positive_rate(orig_freq, "orig_freq"), _positive_rate(new_freq, "new_freq")
    _check_filter(lowpass_filter_width, rolloff)
    g = math.gcd(orig, new)
    return _scale_and_width(orig // g, new // g, lowpass_filter_width, rolloff)[1]


def _resample_gather(x: torch.Tensor, orig: int, new: int, lowpass_filter_width: int, rolloff: float) -> torch.Tensor:
    """:func:`resample` of ``x`` (N, S) for reduced rates ``orig`` (L), ``new`` (M): output ``j``
    sums the input samples within ``width`` of its instant ``j * L / M``, weighted by the same
    windowed sinc as the polyphase filters (float64 weights cast to ``x``'s dtype)."""
    rows, length = x.shape
    scale, width = _scale_and_width(orig, new, lowpass_filter_width, rolloff)
    out_length = -(-new * length // orig)
    offsets = torch.arange(-width, width + 1, device=x.device)
    out = x.new_empty(rows, out_length)
    for start in range(0, out_length, _GATHER_CHUNK):
        j = torch.arange(start, min(out_length, start + _GATHER_CHUNK), device=x.device)
        base = (j * orig) // new
        frac = (j * orig % new).to(torch.float64) / new
        index = base[:, None] + offsets[None, :]  # (n, taps) input samples around each output instant
        weight = _windowed_sinc(offsets[None, :] - frac[:, None], scale, lowpass_filter_width)
        weight = weight * ((index >= 0) & (index < length))  # zero padding outside the input
        taps = x[:, index.clamp(0, max(length - 1, 0)).reshape(-1)].reshape(rows, *index.shape)
        out[:, start : start + j.shape[0]] = (taps * weight.to(x.dtype)).sum(-1)
    return out


def resample_kernel(
    orig_freq: int,
    new_freq: int,
    lowpass_filter_width: int = 6,
    rolloff: float = 0.99,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, int]:
    """The conv1d weight ``(M, 1, 2 * width + L)`` for ``orig_freq -> new_freq`` and its ``width``.

    ``L`` and ``M`` are the rates divided by their gcd; the filters are computed in float64 and
    cast to ``dtype``. The caller owns the returned tensor.
    """
    orig = _positive_rate(orig_freq, "orig_freq")
    new = _positive_rate(new_freq, "new_freq")
    _check_filter(lowpass_filter_width, rolloff)
    g = math.gcd(orig, new)
    kernel, width = _kernel64(orig // g, new // g, int(lowpass_filter_width), float(rolloff))
    return kernel.to(device=device, dtype=dtype, copy=True), width


def resample(
    waveform: torch.Tensor, orig_freq: int, new_freq: int, lowpass_filter_width: int = 6, rolloff: float = 0.99
) -> torch.Tensor:
    """Resample ``waveform`` (..., S) from ``orig_freq`` to ``new_freq`` Hz along the last dim.

    Returns (..., ceil(S * new_freq / orig_freq)) in the input's floating dtype and device; the
    input itself when the rates are equal. Leading dims are any batch shape. Raises ``TypeError``
    for a non-floating waveform and ``ValueError`` for a rate that is not a positive integer.
    """
    if not torch.is_tensor(waveform) or not waveform.is_floating_point():
        got = waveform.dtype if torch.is_tensor(waveform) else type(waveform).__name__
        raise TypeError(f"resample: waveform must be a floating-point tensor, got {got}")
    if waveform.ndim == 0:
        raise ValueError("resample: waveform must have a time dimension, got a 0-d tensor")
    orig = _positive_rate(orig_freq, "orig_freq")
    new = _positive_rate(new_freq, "new_freq")
    if orig == new:
        return waveform
    width = filter_width(orig, new, lowpass_filter_width, rolloff)
    g = math.gcd(orig, new)
    lead, length = waveform.shape[:-1], waveform.shape[-1]
    rows = math.prod(lead)
    if (new // g) * (2 * width + orig // g) > MAX_KERNEL_ELEMENTS:
        out = _resample_gather(waveform.reshape(rows, length), orig // g, new // g, lowpass_filter_width, rolloff)
        return out.reshape(lead + (out.shape[-1],))
    kernel, width = resample_kernel(orig, new, lowpass_filter_width, rolloff, waveform.dtype, waveform.device)
    orig, new = orig // g, new // g
    x = F.pad(waveform.reshape(rows, 1, length), (width, width + orig))  # (N, 1, S + 2 * width + L)
    phases = F.conv1d(x, kernel, stride=orig)  # (N, M, S // L + 1): phase p of output block q
    out = phases.transpose(1, 2).reshape(rows, phases.shape[1] * phases.shape[2])  # sample q * M + p
    out_length = -(-new * length // orig)  # ceil(S * M / L)
    return out[:, :out_length].reshape(lead + (out_length,))
