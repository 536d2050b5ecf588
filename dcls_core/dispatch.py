"""Choice between the reference DCLS path and the fast paths, made per call by device, dtype and shape.

* Construction of the dense kernel: the fused Triton construction
  (:mod:`dcls_core.construction.fused`: CUDA, one to three learned axes, float32 parameters, from
  ``MIN_COUNT`` elements per kernel) or the reference einsum (:mod:`dcls_core.construction.reference`).
* The convolution with that kernel: a registry of paths, :data:`CONV_PATHS`, in order of
  preference (:mod:`dcls_core.conv` states a path's contract). ``auto`` takes the first path that
  supports the call and whose cost rule pays: the matrix depthwise convolution (CUDA, large
  depthwise kernels on inputs of no more positions than the kernel has taps: one batched GEMM per
  call), the direct depthwise convolution on the tensor cores
  (CUDA, 2-D, large depthwise kernels where half precision or TF32 is allowed), then the FFT
  (CUDA, large kernels), then the reference ``F.conv`` (everything else: small kernels, strides,
  tiny problems, the CPU). The rules were measured on an H100 (``benchmarks/NOTES_layers.md``).
* The whole layer: :func:`plan_layer` makes every choice of a layer call once (construction, kernel
  cut, convolution). Where the fused construction is chosen while gradients are recorded (eager
  training), the layer runs as one autograd node: through :mod:`dcls_core.conv.fft.fused_layer`
  where the FFT is chosen for a 1-D or 2-D layer (fewer launches too), through
  :mod:`dcls_core.conv.layer_node` where the direct or matrix path is.

Switches:

* ``DCLS_IMPL=auto|reference|fast``: ``reference`` forces the reference construction and
  ``F.conv``; ``fast`` forces the fast paths wherever they apply (a path whose rule pays, else the
  FFT, :data:`FAST_CONV`, also on the CPU); ``auto`` (default) follows the rules.
* ``DCLS_CONV=auto|autotune|matrix|direct|fft|reference``: forces the convolution alone where the
  named path supports the call (elsewhere the rules above choose), over ``DCLS_IMPL``;
  ``autotune`` measures every path that supports a call (:mod:`dcls_core.conv.autotune`), on any device.
* ``DCLS_CONV_ORDER=matrix,direct,fft`` (the default order): the order of preference of the fast
  paths under ``auto`` where several rules pay and nothing is measured (compiled calls,
  ``DCLS_AUTOTUNE=0``, inference by default); a comma-separated permutation of some of them,
  the paths it leaves out after it in the default order.
* ``DCLS_AUTOTUNE=train|1|0`` (default ``train``): under ``auto`` on CUDA, where the rules choose a
  fast path and several fast paths' rules pay, the fastest of them for the call's shape is
  measured once and cached (:mod:`dcls_core.conv.autotune`; one earlier in this order within
  ``autotune.TIE_MARGIN`` of the fastest wins a near-tie): with ``train`` for calls that record
  gradients (training steps), with ``1`` for every call; ``0`` keeps the fixed order. Inference
  calls keep the fixed order by default: there the measured choice lost to it at model level,
  while in training it won (``benchmarks/NOTES_layers.md``, run 9).
* :func:`forced`: the same within a block, over both variables; ``forced(fused=False)`` keeps the
  construction and the convolution apart (two autograd nodes).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from .construction import fused as fused_construction
from .construction.reference import construct_kernel
from .conv import autotune, direct, fft, matrix, reference
from .conv.common import reach_cuts
from .conv.fft.conv import transform_sizes_for

__all__ = [
    "AUTOTUNE",
    "AUTOTUNE_DEFAULT",
    "AUTOTUNE_ENV_VAR",
    "AUTOTUNE_MODES",
    "CONSTRUCTIONS",
    "CONV_CHOICES",
    "CONVS",
    "CONV_ENV_VAR",
    "CONV_ORDER_ENV_VAR",
    "CONV_PATHS",
    "ENV_VAR",
    "FAST_CONV",
    "IMPLS",
    "LayerPlan",
    "autotune_enabled",
    "build_kernel",
    "conv_order",
    "current_impl",
    "forced",
    "plan_layer",
    "select_construct",
    "select_conv",
    "select_fused",
    "state",
]

IMPLS = ("auto", "reference", "fast")
ENV_VAR = "DCLS_IMPL"
CONV_ENV_VAR = "DCLS_CONV"  # auto | autotune | reference | fft | direct | matrix: the convolution, over DCLS_IMPL
AUTOTUNE_ENV_VAR = "DCLS_AUTOTUNE"  # train (default) | 1 | 0: measure the fast paths per shape under auto on CUDA
AUTOTUNE_MODES = ("train", "1", "0")
# training calls only: where benchmarks/bench_models.py timed the measured choice faster than the fixed order
AUTOTUNE_DEFAULT = "train"
AUTOTUNE = "autotune"
CONV_ORDER_ENV_VAR = "DCLS_CONV_ORDER"  # the fast paths' order of preference where several rules pay

# The convolution paths in order of preference (a new path: its folder under conv/ and one entry here).
CONV_PATHS = {path.NAME: path for path in (matrix, direct, fft, reference)}
FAST_CONV = fft.NAME  # DCLS_IMPL=fast: the path of every call no other fast path's rule takes

CONSTRUCTIONS = ("reference", "triton")
CONVS = tuple(CONV_PATHS)
CONV_CHOICES = (*CONVS, AUTOTUNE)
_forced: dict[str, Optional[str]] = {"construct": None, "conv": None, "fused": None}

ConvFn = Callable[..., Tensor]


def current_impl() -> str:
    """The implementation forced by ``$DCLS_IMPL`` (``auto`` if unset)."""
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in IMPLS:
        raise ValueError(f"{ENV_VAR} must be one of {IMPLS}, got {value!r}")
    return value


@contextlib.contextmanager
def forced(construct: Optional[str] = None, conv: Optional[str] = None, fused: Optional[bool] = None) -> Iterator[None]:
    """Within the block, use the named construction / convolution where it applies
    (benchmarks and tests; a construction that does not apply falls back to the reference, a
    convolution that does not apply to the ``auto`` rules);
    ``fused=False`` never runs a layer as one autograd node. Choices an enclosing block forced and
    this one does not name stay forced."""
    if construct is not None and construct not in CONSTRUCTIONS:
        raise ValueError(f"construct must be one of {CONSTRUCTIONS}, got {construct!r}")
    if conv is not None and conv not in CONV_CHOICES:
        raise ValueError(f"conv must be one of {CONV_CHOICES}, got {conv!r}")
    saved = dict(_forced)
    wanted = {"construct": construct, "conv": conv, "fused": "off" if fused is False else None}
    _forced.update({k: v for k, v in wanted.items() if v is not None})  # nested blocks keep the rest
    try:
        yield
    finally:
        _forced.update(saved)


def state() -> tuple:
    """Everything besides the call itself that the choices depend on: the :func:`forced` choices
    and the switches' values (a recorded layer call is keyed on it, :mod:`dcls_core.conv.layer_graphs`)."""
    env = os.environ
    return (
        tuple(_forced.values()),
        env.get(ENV_VAR),
        env.get(CONV_ENV_VAR),
        env.get(CONV_ORDER_ENV_VAR),
        env.get(AUTOTUNE_ENV_VAR),
    )


def _conv_from_env() -> Optional[str]:
    """The convolution named by ``$DCLS_CONV`` (None if unset or ``auto``)."""
    value = os.environ.get(CONV_ENV_VAR, "auto").strip().lower() or "auto"
    if value == "auto":
        return None
    if value not in CONV_CHOICES:
        raise ValueError(f"{CONV_ENV_VAR} must be one of {('auto', *CONV_CHOICES)}, got {value!r}")
    return value


def conv_order() -> tuple[str, ...]:
    """The fast paths in ``$DCLS_CONV_ORDER``'s order of preference (default: :data:`CONV_PATHS`'
    order); paths it does not name follow in the default order."""
    text = os.environ.get(CONV_ORDER_ENV_VAR, "")
    if torch.compiler.is_compiling():  # no cache while tracing: the graph would be guarded on its contents
        return _parsed_conv_order(text)
    order = _CONV_ORDERS.get(text)
    if order is None:  # parsed once per value: asked on every dispatched call
        order = _CONV_ORDERS[text] = _parsed_conv_order(text)
    return order


_CONV_ORDERS: dict[str, tuple[str, ...]] = {}


def _parsed_conv_order(text: str) -> tuple[str, ...]:
    """:func:`conv_order` for the variable's text."""
    default = tuple(name for name in CONV_PATHS if name != reference.NAME)
    value = text.strip().lower()
    if not value:
        return default
    named = tuple(part.strip() for part in value.split(","))
    if not set(named) <= set(default) or len(set(named)) != len(named):
        raise ValueError(
            f"{CONV_ORDER_ENV_VAR}={value!r}: expected a comma-separated order of some of {', '.join(default)}, "
            "each once"
        )
    return named + tuple(name for name in default if name not in named)


def autotune_enabled(records_grad: bool = True) -> bool:
    """True if ``$DCLS_AUTOTUNE`` (default :data:`AUTOTUNE_DEFAULT`) has the fast paths measured for a
    call that records gradients (``records_grad``) or does not: ``1`` both, ``train`` the first."""
    value = os.environ.get(AUTOTUNE_ENV_VAR, AUTOTUNE_DEFAULT).strip().lower() or AUTOTUNE_DEFAULT
    if value not in AUTOTUNE_MODES:
        raise ValueError(f"{AUTOTUNE_ENV_VAR} must be one of {', '.join(AUTOTUNE_MODES)}, got {value!r}")
    return value == "1" or (value == "train" and records_grad)


# -- construction ------------------------------------------------------------------------
def select_construct(
    weight: Tensor,
    P: Tensor,
    SIG: Optional[Tensor],
    dilated_kernel_size: Sequence[int],
    version: str,
) -> tuple[str, Callable[..., Tensor]]:
    """``(name, fn)``; ``fn(weight, P, SIG, dilated_kernel_size, version)`` builds the kernel."""
    wanted = _forced["construct"]
    if wanted != "reference" and (current_impl() != "reference" or wanted == "triton") and weight.is_cuda:
        if fused_construction.supports(weight, P, SIG, dilated_kernel_size, version) and (
            fused_construction.pays(weight) or wanted == "triton"
        ):
            return "triton", fused_construction.construct_kernel_fused
    return "reference", construct_kernel


def build_kernel(
    weight: Tensor, P: Tensor, SIG: Optional[Tensor], dilated_kernel_size: Sequence[int], version: str
) -> Tensor:
    """The dense kernel through the selected construction."""
    _, fn = select_construct(weight, P, SIG, dilated_kernel_size, version)
    return fn(weight, P, SIG, tuple(dilated_kernel_size), version)


# -- convolution -------------------------------------------------------------------------
def _measured(call: autotune.ConvCall, names: Sequence[str]) -> Optional[str]:
    """The fastest of ``names`` (in order of preference: near-ties go to the first) for this call
    (:mod:`dcls_core.conv.autotune`: cached, else measured where allowed), or None: while
    compiling (shapes stay symbolic, nothing is looked up) or under deterministic algorithms. A
    cached name that does not support the call is ignored."""
    if not autotune.lookups_allowed():
        return None
    if len(names) < 2:
        return names[0] if names else None
    key = autotune.call_key(call, names)
    chosen = autotune.choice(key)
    if chosen is None:
        chosen = autotune.measure(key, {name: CONV_PATHS[name].convolve for name in names}, call)
    return chosen if chosen in names else None


def _conv_name(
    input: Tensor,
    kernel_shape: Sequence[int],
    stride: Sequence[int],
    groups: int,
    call: Optional[autotune.ConvCall] = None,
) -> str:
    """The path for this call; ``call`` (the whole call) lets the fastest be measured."""
    wanted = _forced["conv"] or _conv_from_env()
    if wanted == AUTOTUNE and call is not None:
        fast = conv_order()
        order = (*fast, *(name for name in CONV_PATHS if name not in fast))  # the reference last
        names = [name for name in order if CONV_PATHS[name].supports(input, kernel_shape, stride, groups)]
        chosen = _measured(call, names)
        if chosen is not None:
            return chosen
    elif wanted is not None and wanted != AUTOTUNE and CONV_PATHS[wanted].supports(input, kernel_shape, stride, groups):
        return wanted
    impl = current_impl()
    if impl == "reference":
        return reference.NAME
    paying = [
        name
        for name in conv_order()
        if CONV_PATHS[name].supports(input, kernel_shape, stride, groups)
        and CONV_PATHS[name].pays(input, kernel_shape, stride, groups)
    ]
    if len(paying) > 1 and call is not None and input.is_cuda and autotune_enabled(any(call.grads)):
        chosen = _measured(call, paying)
        if chosen is not None:
            return chosen
    if paying:
        return paying[0]
    return FAST_CONV if impl == "fast" else reference.NAME


def select_conv(
    input: Tensor,
    kernel: Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    groups: int,
    padding_mode: str,
) -> tuple[str, ConvFn]:
    """``(name, fn)``: the convolution for this call; ``fn(input, kernel, bias, stride,
    padding, groups, padding_mode)`` equals :func:`dcls_core.functional.conv_nd`."""
    recording = torch.is_grad_enabled()
    grads = (recording and input.requires_grad, recording and kernel.requires_grad)
    call = autotune.ConvCall(input, kernel.shape, kernel.dtype, stride, padding, groups, padding_mode, grads)
    name = _conv_name(input, kernel.shape, stride, groups, call)
    return name, CONV_PATHS[name].convolve


# -- the whole layer ---------------------------------------------------------------------
class LayerPlan(NamedTuple):
    """How one DCLS layer call runs (:func:`plan_layer`)."""

    fused: bool  # the whole layer through dcls_core.conv.fft.fused_layer (the fields below unused)
    construct: Callable[..., Tensor]  # (weight, P, SIG, dilated_kernel_size, version) -> dense kernel
    conv: ConvFn  # the convolution, as select_conv's
    cuts: tuple[int, ...]  # taps cut from both ends of each kernel axis (crop_to_reach), zeros padding
    padding: tuple[int, ...]  # the convolution's padding after the cuts
    prepare: Optional[Callable[..., Any]]  # the conv path's prepare where conv.layer_node runs the call


def plan_layer(
    input: Tensor,
    weight: Tensor,
    P: Tensor,
    SIG: Optional[Tensor],
    dilated_kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    padding_mode: str,
    version: str,
) -> LayerPlan:
    """Every choice of one layer call, made once: the construction, the kernel cut to the taps
    that meet the input (zero padding), the convolution of that cut kernel (the call
    :func:`select_conv` would see), and whether one autograd node runs the whole call (gradients
    recorded, not compiling, the fused construction selected, not ``forced(fused=False)``): the
    fused FFT layer where the FFT is selected, stride 1 and the transform planes fit the
    construction's register block; else :mod:`dcls_core.conv.layer_node` where the path has a
    ``prepare`` (direct, matrix)."""
    ndim = len(dilated_kernel_size)
    construct_name, construct = select_construct(weight, P, SIG, dilated_kernel_size, version)
    groups = input.shape[-ndim - 1] // weight.shape[1] if input.dim() > ndim else 1  # else the path names the error
    cuts, cut_padding = (0,) * ndim, tuple(int(p) for p in padding)
    if padding_mode == "zeros":
        cuts, cut_padding = reach_cuts(dilated_kernel_size, input.shape, stride, padding)
    kernel_shape = (*weight.shape[:2], *(k - 2 * c for k, c in zip(dilated_kernel_size, cuts)))
    recording = torch.is_grad_enabled()
    params_grad = recording and any(t is not None and t.requires_grad for t in (weight, P, SIG))
    grads = (recording and input.requires_grad, params_grad)
    call = autotune.ConvCall(input, kernel_shape, weight.dtype, stride, cut_padding, groups, padding_mode, grads)
    conv_name = _conv_name(input, kernel_shape, stride, groups, call)
    one_node = (
        construct_name == "triton" and _forced["fused"] != "off" and recording and not torch.compiler.is_compiling()
    )
    fused = (
        one_node
        and conv_name == fft.NAME
        and ndim <= 2
        and all(s == 1 for s in stride)
        and input.dim() >= ndim + 1
        and fused_construction.places(
            transform_sizes_for(input.shape[-ndim:], padding, dilated_kernel_size, padding_mode, input.device.type)
        )
    )
    path = CONV_PATHS[conv_name]
    prepare = getattr(path, "prepare", None) if one_node and not fused else None
    return LayerPlan(fused, construct, path.convolve, cuts, cut_padding, prepare)


def select_fused(
    input: Tensor,
    weight: Tensor,
    P: Tensor,
    SIG: Optional[Tensor],
    dilated_kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    padding_mode: str,
    version: str,
) -> bool:
    """True if :func:`dcls_core.conv.fft.fused_layer.fused_dcls_fft` runs this layer call
    (:func:`plan_layer`'s ``fused``)."""
    return plan_layer(input, weight, P, SIG, dilated_kernel_size, stride, padding, padding_mode, version).fused
