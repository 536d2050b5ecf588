"""One registration for an op that runs as an ``autograd.Function`` eagerly and as a pair of
``torch.library`` custom ops (forward, backward) under ``torch.compile``, opaque to the compiler.

The convolution paths and the fused construction use it; each gives:

* ``forward(*tensors, *settings) -> Tensor`` with type hints (the custom op's schema is inferred
  from them); ``tensors`` are the first ``num_tensors`` arguments, the inputs that may need a
  gradient (any of them may be None, e.g. a bias); ``settings`` are plain values;
* ``backward(grad, *tensors, *saved, *needs) -> tuple of num_tensors Tensors``, also with type
  hints, where ``saved = backward_settings(*settings)`` and ``needs`` says which gradients are
  wanted: a wanted gradient has the shape and dtype of its input, every other one is an empty
  tensor of the input's dtype (``new_empty(0)``; the op's fake implementation assumes so);
* ``forward_fake(*tensors, *settings) -> Tensor``: an empty tensor of the output's shape and dtype.

The Function's backward is ``once_differentiable``: a second derivative raises.

Both run with the first CUDA tensor's device current: Triton launches on the current device, so a
layer on ``cuda:1`` called while ``cuda:0`` is current would otherwise run its programs on the
wrong GPU.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["RegisteredOp", "on_tensor_device", "register_op"]


def _same(*settings):
    return settings


def on_tensor_device(fn: Callable) -> Callable:
    """``fn`` run with the device of its first CUDA tensor argument current (a no-op guard when that
    device already is, or no argument is a CUDA tensor)."""

    @functools.wraps(fn)
    def guarded(*args):
        for a in args:
            if isinstance(a, Tensor) and a.is_cuda:
                if a.device.index != torch.cuda.current_device():
                    with torch.cuda.device(a.device):
                        return fn(*args)
                break
        return fn(*args)

    return guarded


class RegisteredOp:
    """What :func:`register_op` returns: call it as the op (``op(*tensors, *settings)``); its
    eager ``forward``, ``backward`` and ``backward_settings`` (with the device guard) are there
    for a caller that runs the op's passes inside a larger autograd node
    (:mod:`dcls_core.conv.layer_node`)."""

    def __init__(self, name: str, apply: Callable[..., Tensor], forward, backward, backward_settings) -> None:
        self.__name__ = name
        self._apply = apply
        self.forward, self.backward, self.backward_settings = forward, backward, backward_settings

    def __call__(self, *inputs) -> Tensor:
        return self._apply(*inputs)


def register_op(
    name: str,
    forward: Callable[..., Tensor],
    backward: Callable[..., tuple],
    forward_fake: Callable[..., Tensor],
    num_tensors: int,
    backward_settings: Callable[..., tuple] = _same,
    device_types: Optional[str] = None,
) -> RegisteredOp:
    """Register ``dcls_core::{name}`` and ``dcls_core::{name}_backward`` and an autograd.Function
    over ``forward``/``backward`` (contracts in the module docstring).

    Returns the op: called, it runs the custom op while ``torch.compile`` traces, the Function
    where a gradient is recorded, else the forward alone (eager calls: no custom-op dispatch, and
    no autograd node where none is needed).
    """
    n = num_tensors
    forward, backward = on_tensor_device(forward), on_tensor_device(backward)
    forward_op = torch.library.custom_op(f"dcls_core::{name}", forward, mutates_args=(), device_types=device_types)
    forward_op.register_fake(forward_fake)
    backward_op = torch.library.custom_op(
        f"dcls_core::{name}_backward", backward, mutates_args=(), device_types=device_types
    )

    @backward_op.register_fake
    def _(grad, *args):
        tensors, needs = args[:n], args[len(args) - n :]
        return tuple(
            (torch.empty_like(t) if need else t.new_empty(0)) if t is not None else grad.new_empty(0)
            for t, need in zip(tensors, needs)
        )

    def save(ctx, inputs: Sequence) -> None:
        ctx.save_for_backward(*inputs[:n])
        ctx.settings = tuple(backward_settings(*inputs[n:]))

    def gradients(ctx, grad: Tensor, run_backward: Callable[..., tuple]) -> tuple:
        tensors = ctx.saved_tensors
        needs = tuple(bool(v) for v in ctx.needs_input_grad[:n])
        if not any(needs):
            grads: Sequence[Optional[Tensor]] = (None,) * n
        else:
            computed = run_backward(grad, *tensors, *ctx.settings, *needs)
            grads = [g if need and t is not None else None for g, t, need in zip(computed, tensors, needs)]
        return (*grads, *(None,) * (len(ctx.needs_input_grad) - n))

    forward_op.register_autograd(
        lambda ctx, grad: gradients(ctx, grad, backward_op),
        setup_context=lambda ctx, inputs, output: save(ctx, inputs),
    )

    class Function(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            save(ctx, inputs)
            return forward(*inputs)

        @staticmethod
        @once_differentiable
        def backward(ctx, grad):
            return gradients(ctx, grad, backward)

    Function.__name__ = Function.__qualname__ = f"{name}_function"

    def apply(*inputs) -> Tensor:
        if torch.compiler.is_compiling():
            return forward_op(*inputs)
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs[:n]):
            return Function.apply(*inputs)
        return forward(*inputs)  # no gradient to record (inference): no autograd node to build

    return RegisteredOp(name, apply, forward, backward, backward_settings)
