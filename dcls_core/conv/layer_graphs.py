"""Eager training calls of a DCLS layer replayed as CUDA graphs.

An eager DCLS layer step issues a few dozen operations and launches from Python, forward and
backward; on a fast GPU an eager DCLS model waits for that host time. Here a layer's training
call (module in training mode, gradients recorded, a CUDA input, not compiling, not inside a
capture) is recorded once per call signature as two CUDA graphs, its forward and its backward
(the recipe of :func:`torch.cuda.make_graphed_callables`), and later calls replay them: a copy
of the input (into a buffer of the input's strides where it is dense in any axis order, else
contiguous), one replay and a copy of the output, and in the backward a copy of the output
gradient and one replay.

Call signature (the key): the input's shape, strides, dtype, device and ``requires_grad``; the
autocast state; the parameters' storage, dtype and ``requires_grad``; the dispatcher's forced
choices and switches (the caller passes :func:`dcls_core.dispatch.state`). The first call of a
key runs eagerly (it warms up: Triton compilation, index tables, path choices measured by the
device's time alone, which is what replays pay: :func:`dcls_core.conv.autotune.device_time`), the
second records, later ones replay. A layer keeps at most :data:`MAX_KEYS` keys; further
signatures run eagerly, except that keys recorded on parameter memory other than the call's
(parameters replaced, e.g. moved to another dtype) are first forgotten, with their graphs, to make
room.

Recording. The second call records both graphs at once, in the forward pass: the forward, then
the backward of that recording (``torch.autograd.grad`` of its output against an output-gradient
buffer, as :func:`torch.cuda.make_graphed_callables` does), never inside an autograd backward:
a backward pass that records reenters autograd's engine, which may run the outer pass's pending
nodes (gradient accumulation) inside the recording. Calls made inside a backward pass (an
activation checkpoint's recomputation) run eagerly, as do calls made while saved-tensor hooks are
set (a non-reentrant activation checkpoint, offloading to the host: the hooks must see what the
call saves, which a replay does not show them), calls whose parameters are computed at each call
(a parametrization: a replay would give their originals no gradient), and after a capture failed,
every call for the rest of the process (the failed capture may leave CUDA's or the allocator's
capture state broken). The recording reads the parameters through
fresh leaves on their memory, so its autograd graph shares no node with the caller's (a
parameter's gradient accumulator, kept alive by the caller's graph, belongs to the stream it was
made on, and the capture would have to wait on that stream).

Memory. What a replay needs stays allocated; the rest matches an eager call's lifetimes:

* the input's copy (the graph's static input), which the convolution saves for its backward
  (eager keeps the caller's input alive for the same span), and after the backward the input
  gradient, written over it: no second buffer;
* the output: each replay copies it out of the graph's memory into a tensor of its own, which
  lives as long as its users (as an eager output: a consumer that keeps no reference, such as a
  LayerNorm run in float32 under autocast, frees it at once); the graph's output block is freed
  after the recording, so the layers recorded later reuse it (their replays come after the copy);
* the output gradient: copied over the graph's output block (nothing reads that block between
  the copy-out and the backward, the order rules below keep later layers' use of it ordered), so
  no buffer of its own, unless the forward saves its output (then a buffer of its own);
* the tensors the forward saves for the backward (held), and both graphs' temporaries, in one
  memory pool per :class:`_Generation`, where one layer's temporaries are reused by the layers
  recorded after it; a matrix product's cuBLAS workspace is one of those temporaries (the
  process's workspaces are dropped around each recording, so none stays allocated in a pool;
  no other thread may run CUDA matrix products or capture while a layer records).

Order. A generation's memory is planned for a training step's order: the forwards of its layers
in recording order, then their backwards in reverse. So within a cycle a forward replays only
after the generation's earlier forwards and before any of its backwards, and a backward only
once no layer recorded after it waits for its own backward; a new cycle (a forward after a
backward, or an earlier forward) begins only when no replayed forward of the generation waits
for its backward (or its autograd graph is gone). A generation takes recordings until its first replay
that is not the one right after a recording. A forward that cannot replay runs eagerly; a
backward out of order raises (it would read memory another graph wrote), as does a second
backward through one replayed call (``retain_graph``).

Results equal the eager call's: the graphs hold the same launches. One difference in rounding:
under autocast, eager calls of a layer inside one autocast region share a cached low-precision
cast of each parameter, so their gradients add up in that precision at the cast; a replayed call
casts inside its graph and its gradient adds to the parameter's in its own dtype (float32).
``$DCLS_LAYER_GRAPHS=1`` records
where the conditions above hold; ``small`` only calls whose input has at most
:data:`SMALL_SAMPLE_ELEMENTS` elements per sample (where a layer step's host time exceeds its
device time at the usual batch sizes and its graphs' memory is smallest: a ConvNeXt-T's last two
stages; per sample, so which layers record does not change with the batch size, nor for a last,
smaller batch); ``0`` runs every call eagerly (the default: :data:`DEFAULT`).
"""

from __future__ import annotations

import contextlib
import os
import warnings
import weakref
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from . import autotune

__all__ = [
    "DEFAULT",
    "ENV_VAR",
    "MAX_KEYS",
    "MODES",
    "SMALL_SAMPLE_ELEMENTS",
    "admits",
    "enabled",
    "graphable",
    "graphed_call",
    "held_bytes",
    "mode",
    "recorded",
    "wanted",
]

ENV_VAR = "DCLS_LAYER_GRAPHS"
MODES = ("1", "small", "0")
# ``small``: a ConvNeXt-T's stages 3-4 (92160 and 43008 elements per sample), not 1-2 (380928, 190464)
SMALL_SAMPLE_ELEMENTS = 2**17
DEFAULT = "0"  # opt-in: the recording step's peak memory is above eager's (benchmarks/NOTES_layers.md, run 20)
MAX_KEYS = 2  # signatures recorded per layer (a training batch, the last partial batch)
MAX_GENERATIONS = 8  # live memory pools per device; beyond them, new signatures run eagerly
_POOLS_FULL_WARNED: list[bool] = []  # the warning that every pool is held: once per process


def mode() -> str:
    """``$DCLS_LAYER_GRAPHS`` (default :data:`DEFAULT`), one of :data:`MODES`."""
    value = os.environ.get(ENV_VAR, DEFAULT).strip().lower() or DEFAULT
    if value not in MODES:
        raise ValueError(f"{ENV_VAR} must be one of {', '.join(MODES)}, got {value!r}")
    return value


def enabled() -> bool:
    """True where ``$DCLS_LAYER_GRAPHS`` records some calls (``1`` or ``small``)."""
    return mode() != "0"


def admits(module: nn.Module, input: Tensor) -> bool:
    """Whether ``$DCLS_LAYER_GRAPHS`` lets this call of ``module`` be recorded (``1``: every call;
    ``small``: an input of at most :data:`SMALL_SAMPLE_ELEMENTS` elements per sample; ``input``
    is batched where it has two dimensions more than ``module.conv_dims``, if the module has one,
    else where it has more than one dimension)."""
    value = mode()
    if value != "small":
        return value == "1"
    conv_dims = getattr(module, "conv_dims", None)
    batched = input.dim() == conv_dims + 2 if isinstance(conv_dims, int) else input.dim() > 1
    per_sample = input.numel() // max(1, input.shape[0]) if batched else input.numel()
    return per_sample <= SMALL_SAMPLE_ELEMENTS


def wanted(module: nn.Module, input: Tensor) -> bool:
    """True if this call of ``module`` may run through recorded graphs (module docstring): an
    eager training call on the current CUDA device (a recording captures on the current device's
    stream), not inside a capture, that :func:`graphable` allows."""
    return (
        not torch.compiler.is_compiling()  # first: traced code never reaches the rest
        and module.training
        and input.is_cuda
        and torch.is_grad_enabled()
        and graphable(module, input)  # before the CUDA queries: the default switch ends here
        and input.device.index == torch.cuda.current_device()
        and module.weight.device == input.device
        and type(input) is torch.Tensor
        and not torch.cuda.is_current_stream_capturing()
    )


_DISABLED: list[str] = []  # why recordings stopped for this process (a capture failed), if they did
# the innermost default saved-tensor hooks, or None (torch's; where this torch lacks it, hooks are
# assumed set: no call records)
_TOP_SAVED_TENSOR_HOOKS: Optional[Callable[[bool], object]] = getattr(
    torch._C._autograd, "_top_saved_tensors_default_hooks", None
)


def _saved_tensor_hooks_active() -> bool:
    """Whether default saved-tensor hooks are set (a non-reentrant activation checkpoint, offloading
    to the host): they must see what the call saves, which a replay does not show them."""
    return _TOP_SAVED_TENSOR_HOOKS is None or _TOP_SAVED_TENSOR_HOOKS(True) is not None


def graphable(module: nn.Module, input: Tensor) -> bool:
    """The conditions of :func:`wanted` other than the call's kind (an eager training call, on the
    current CUDA device, not capturing): no capture has failed in this process, the switch admits
    the call (:func:`admits`) and no saved-tensor hooks are set."""
    return not _DISABLED and admits(module, input) and not _saved_tensor_hooks_active()


class _Generation:
    """Layers recorded into one memory pool, numbered in recording order; the order rules of the
    module docstring. ``last_forward``/``last_backward``: the numbers of the last forward and
    backward replayed in the current cycle (-1: none). ``waiting``: layer number -> a weak
    reference to the token its replayed call's autograd context holds, until its backward."""

    def __init__(self, pool) -> None:
        self.pool = pool
        self.count = 0
        self.last_forward = -1
        self.last_backward = -1
        self.sealed = False
        self.waiting: dict[int, Callable[[], object]] = {}

    def may_record(self) -> bool:
        return not self.sealed and self.last_backward < 0

    def recorded(self) -> int:
        """A new layer's number; its forward replays at once (part of the recording)."""
        number = self.count
        self.count += 1
        self.last_forward = number
        return number

    def may_replay_forward(self, number: int) -> bool:
        if self.last_backward < 0 and number > self.last_forward:
            return True
        self.waiting = {i: ref for i, ref in self.waiting.items() if ref() is not None}
        return not self.waiting  # a new cycle

    def replayed_forward(self, number: int) -> None:
        if not (self.last_backward < 0 and number > self.last_forward):
            self.last_backward = -1  # a new cycle
        self.sealed = True
        self.last_forward = number

    def may_replay_backward(self, number: int) -> bool:
        """Its forward replayed in this cycle, and no later-recorded layer still waits for its
        backward (this backward's temporaries may lie on that layer's saved tensors)."""
        ref = self.waiting.get(number)
        if ref is None or ref() is None:
            return False
        if max(self.waiting) == number:  # a step's order: no pruning needed
            return True
        self.waiting = {i: ref for i, ref in self.waiting.items() if ref() is not None}
        return max(self.waiting) == number

    def replayed_backward(self, number: int) -> None:
        self.sealed = True
        self.last_backward = number
        self.waiting.pop(number, None)


class _Generations:
    """The generations of one device: the newest takes recordings while it may. A generation lives
    as long as a layer's graphs recorded in it (its entries hold it); at most
    :data:`MAX_GENERATIONS` live at once."""

    def __init__(self) -> None:
        self._current: Optional[Callable[[], Optional[_Generation]]] = None
        self._live: weakref.WeakSet[_Generation] = weakref.WeakSet()

    def for_recording(self) -> Optional[_Generation]:
        current = self._current() if self._current is not None else None
        if current is None or not current.may_record():
            if len(self._live) >= MAX_GENERATIONS:
                return None
            current = _Generation(torch.cuda.graph_pool_handle())
            self._live.add(current)
            self._current = weakref.ref(current)
        return current

    def close_current(self) -> None:
        """No more recordings in the current generation (a failed capture may have left blocks in its pool)."""
        self._current = None

    def live(self) -> int:
        return len(self._live)


_GENERATIONS: dict[torch.device, _Generations] = {}


def _alias(tensor: Tensor) -> Tensor:
    """A tensor on ``tensor``'s memory that does not keep it allocated: once ``tensor`` is gone, its
    block in a graph pool is free to later recordings in that pool, and the alias reads and writes
    whatever the replays put there (valid while the pool's graphs live: the entry holds them)."""
    storage = tensor.untyped_storage()
    alias = torch._C._construct_storage_from_data_pointer(storage.data_ptr(), tensor.device, storage.nbytes())
    empty = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
    return empty.set_(alias, tensor.storage_offset(), tensor.shape, tensor.stride())


class _Token:
    """Held by a replayed call's autograd context: alive while its backward may still come."""

    __slots__ = ("__weakref__",)


class _Entry:
    """One layer's graphs for one call signature."""

    def __init__(self, params: Sequence[Tensor]) -> None:
        self.params = tuple(params)
        self.param_memory = tuple(p.data_ptr() for p in params)  # what the key knows of them
        self.calls = 0
        self.generation: Optional[_Generation] = None
        self.number = -1  # in the generation's recording order
        self.forward_graph: Optional[torch.cuda.CUDAGraph] = None
        self.backward_graph: Optional[torch.cuda.CUDAGraph] = None
        self.static_input: Optional[Tensor] = None
        self.output: Optional[Tensor] = None  # the forward graph's output block (an alias: it is the pool's)
        self.grad_output: Optional[Tensor] = None  # the backward graph's output gradient: the output block or own
        self.held: list[Tensor] = []  # what the forward saves for the backward: stays allocated
        self.param_grads: tuple[Tensor, ...] = ()  # the used parameters' gradients: one flat tensor where one dtype
        self.param_used: tuple[bool, ...] = ()  # per parameter that records gradients: whether the call uses it
        self.replays = 0  # forward replays after the recording: which call a backward belongs to
        self.backward_stamp = -1  # the value of ``replays`` at the forward whose backward ran last
        self.failed = False  # could not be recorded: this signature runs eagerly

    # -- recording ----------------------------------------------------------------------
    def record(
        self,
        module: nn.Module,
        fn: Callable[[Tensor], Tensor],
        input: Tensor,
        params: Sequence[Tensor],
        generations: _Generations,
    ) -> bool:
        """Records the forward and its backward, then replays the forward for this call."""
        generation = generations.for_recording()
        if generation is None:  # every pool in use: this signature runs eagerly (and out of device_time)
            if not _POOLS_FULL_WARNED:
                _POOLS_FULL_WARNED.append(True)
                warnings.warn(
                    f"dcls_core: all {MAX_GENERATIONS} CUDA-graph memory pools of DCLS layers are held by recorded "
                    "layers still alive; layers that record from now on run eagerly",
                    stacklevel=4,
                )
            self.failed = True
            return False
        self.static_input = _dense_like(input).requires_grad_(input.requires_grad)  # filled before the replay
        # the recording differentiates new leaves on the parameters' memory: its autograd graph shares
        # no node with the caller's (a parameter's gradient accumulator, made on another stream, would
        # make the capture wait on that stream and fail)
        self.params = tuple(params)  # this call's (the key knows their memory, not their identity)
        leaves = [p.detach().requires_grad_(p.requires_grad) for p in self.params]
        forward, backward = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        try:
            with _cublas_workspaces_in_pool():
                with (
                    _parameters_replaced(module, self.params, leaves),
                    torch.autograd.graph.saved_tensors_hooks(self._hold, _unpacked),
                ):
                    with _capture(forward, generation.pool), _autocast_without_cache(input.device):
                        output = fn(self.static_input)
                    own = [self.static_input, *leaves]
                    if _foreign_leaf(output, own):
                        raise RuntimeError("the call reads a parameter other than through its module's own attributes")
                saved = {t.untyped_storage().data_ptr() for t in self.held}
                own_dy = output.untyped_storage().data_ptr() in saved  # the backward reads the output: dy elsewhere
                self.grad_output = (
                    torch.empty_like(output, memory_format=torch.preserve_format) if own_dy else output.detach()
                )
                if output.requires_grad:
                    self._record_backward(backward, generation, output, leaves)
        except _CaptureFailed as exc:  # the capture's state (CUDA's, the allocator's) is not to be trusted
            _DISABLED.append(str(exc.__cause__))
            for entries in list(_LAYERS.values()):  # no replays either: their memory goes with the last holder
                entries.clear()
            message = (
                f"dcls_core: a CUDA graph capture of a DCLS layer call failed ({exc.__cause__}); DCLS layers run "
                f"eagerly from now on in this process (set {ENV_VAR}=0 to run them so from the start)"
            )
            warnings.warn(message, stacklevel=4)
            generations.close_current()
            self.failed, self.static_input, self.held, self.grad_output = True, None, [], None
            return False
        except Exception as exc:  # the call cannot be replayed as recorded: this signature stays eager
            message = f"dcls_core: a DCLS layer call could not be recorded as CUDA graphs ({exc}); it runs eagerly"
            warnings.warn(message, stacklevel=4)
            generations.close_current()
            self.failed, self.static_input, self.held, self.grad_output = True, None, [], None
            return False
        self.forward_graph, self.generation = forward, generation
        self.backward_graph = backward if self.param_grads or self.static_input.requires_grad else None
        self.number = generation.recorded()
        self.output = _alias(output)  # the block goes back to the pool with ``output``
        if not own_dy:
            self.grad_output = self.output
        with torch.no_grad():  # after both recordings (one that runs its operations writes dx there)
            self.static_input.copy_(input)
        forward.replay()
        return True

    def _hold(self, tensor: Tensor) -> Tensor:
        self.held.append(tensor)
        return tensor

    def _record_backward(
        self, graph: torch.cuda.CUDAGraph, generation: _Generation, output: Tensor, leaves: Sequence[Tensor]
    ) -> None:
        wrt = [t for t in (self.static_input, *leaves) if t.requires_grad]
        with _capture(graph, generation.pool):
            grads = list(torch.autograd.grad(output, wrt, self.grad_output, allow_unused=True))
            if self.static_input.requires_grad:
                dx = grads.pop(0)
                if dx is None:
                    self.static_input.detach().zero_()
                else:
                    self.static_input.detach().copy_(dx)  # the input gradient over the input's copy
            self.param_used = tuple(g is not None for g in grads)  # an unused parameter's gradient: None
            grads = [g for g in grads if g is not None]
            if len({g.dtype for g in grads}) == 1:
                grads = [torch.cat([g.reshape(-1) for g in grads])]
        self.param_grads = tuple(grads)

    # -- replays ------------------------------------------------------------------------
    def may_replay_forward(self) -> bool:
        return self.generation.may_replay_forward(self.number)

    def replay_forward(self, input: Tensor) -> None:
        with torch.no_grad():
            self.static_input.copy_(input)
        self.forward_graph.replay()
        self.generation.replayed_forward(self.number)
        self.replays += 1

    def backward(self, grad_output: Tensor, stamp: int) -> Optional[Tensor]:
        """Replays the backward of the forward call made at ``replays == stamp``; returns the
        input's gradient (None where not required), valid until the layer's next replay."""
        if stamp != self.replays or stamp == self.backward_stamp:
            raise RuntimeError(
                "dcls_core: a second backward through a DCLS layer call replayed as a CUDA graph (retain_graph), "
                f"or the backward of a call whose memory a later call reused; set {ENV_VAR}=0 to run DCLS layers "
                "without CUDA graphs"
            )
        if not self.generation.may_replay_backward(self.number):
            raise RuntimeError(
                "dcls_core: the backward of a DCLS layer call replayed as a CUDA graph came out of the order its "
                f"memory was planned for (set {ENV_VAR}=0 to run DCLS layers without CUDA graphs)"
            )
        self.backward_stamp = stamp
        with torch.no_grad():
            self.grad_output.copy_(grad_output)
        self.backward_graph.replay()
        self.generation.replayed_backward(self.number)
        return self.static_input.detach() if self.static_input.requires_grad else None

    def param_grad_views(self) -> tuple[Optional[Tensor], ...]:
        """The parameters' gradients of the last backward, copied out of the graph's memory (at
        once: an earlier-recorded layer's output block may lie on them, and its backward writes its
        output gradient there)."""
        copies = [g.clone() for g in self.param_grads]
        flat = copies[0] if len(copies) == 1 else None
        out, offset = [], 0
        used = iter(self.param_used)
        for p in self.params:
            if not p.requires_grad or not next(used):
                out.append(None)
            elif flat is not None:
                out.append(flat[offset : offset + p.numel()].view(p.shape))
                offset += p.numel()
            else:
                out.append(copies.pop(0))
        return tuple(out)


class _CaptureFailed(Exception):
    """A CUDA graph capture raised (the cause): CUDA's or the allocator's capture state may be left
    broken, so no layer records again in this process."""


@contextlib.contextmanager
def _capture(graph: torch.cuda.CUDAGraph, pool: object) -> Iterator[None]:
    """``torch.cuda.graph(graph, pool)``, an exception raised in it or by it as :class:`_CaptureFailed`."""
    try:
        with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
            yield
    except Exception as exc:
        raise _CaptureFailed(str(exc)) from exc


def _foreign_leaf(output: Tensor, own: Sequence[Tensor]) -> bool:
    """Whether ``output``'s autograd graph accumulates a gradient into a leaf other than ``own``
    (the recording's input copy and parameter leaves): the call read a tensor that records
    gradients other than through them (another module's parameter, a parameter held from before
    the call, a parametrization's original), whose gradient the replays would not give."""
    own_ids = {id(t) for t in own}
    seen, stack = set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # AccumulateGrad nodes: the leaf they accumulate into
        if variable is not None and id(variable) not in own_ids:
            return True
        stack.extend(fn for fn, _ in node.next_functions)
    return False


@contextlib.contextmanager
def _parameters_replaced(module: nn.Module, params: Sequence[Tensor], leaves: Sequence[Tensor]):
    """``module``'s parameters in ``params`` read as the matching ``leaves`` inside the block (one
    that is not ``module``'s own is read as itself: :func:`_foreign_leaf` then finds it)."""
    by_id = {id(p): leaf for p, leaf in zip(params, leaves)}
    saved = {name: p for name, p in module._parameters.items() if id(p) in by_id}
    try:
        for name, p in saved.items():
            module._parameters[name] = by_id[id(p)]
        yield
    finally:
        module._parameters.update(saved)


@contextlib.contextmanager
def _cublas_workspaces_in_pool():
    """cuBLAS's workspaces dropped before and after the block (as torch's cudagraph trees do).

    torch keeps one cuBLAS workspace per handle and stream, allocated at its first matrix product
    and kept for the process. One first made inside a capture (the capture stream's) is allocated
    in that graph's pool and would stay allocated there after the graphs are gone; a later
    recording into another generation's pool would also use it, so two pools would own one block.
    Dropped around each recording, the workspace is one more temporary of the graphs recorded
    in the block: a block of their pool, free to later recordings after it.

    torch drops the workspaces of the whole process (every thread, stream and device) at once: no
    other thread may run CUDA matrix products or capture a CUDA graph while a layer records (a
    training step runs on one thread; each layer records once, at its second training call)."""
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", lambda: None)  # absent from CPU-only builds
    clear()
    try:
        yield
    finally:
        clear()


def _unpacked(tensor: Tensor) -> Tensor:
    return tensor


def _dense_like(input: Tensor) -> Tensor:
    """An empty tensor like ``input`` (the graph's input copy): with its strides where it is dense
    in any axis order, else contiguous or channels-last (``torch.empty_like``'s
    ``preserve_format``); gradients may have any strides."""
    return torch.empty_like(input, memory_format=torch.preserve_format)


def _dense(input: Tensor) -> bool:
    """Whether ``input`` has the strides :func:`_dense_like` gives it (its copy in a recording)."""
    if input.is_contiguous() or input.is_contiguous(memory_format=torch.channels_last):
        return True
    return _dense_like(input).stride() == input.stride()


def _autocast_without_cache(device: torch.device):
    """The caller's autocast state with the cast cache off (recordings must not keep cached casts)."""
    kind = device.type
    return torch.autocast(
        kind, dtype=torch.get_autocast_dtype(kind), enabled=torch.is_autocast_enabled(kind), cache_enabled=False
    )


def _generations(device: torch.device) -> _Generations:
    generations = _GENERATIONS.get(device)
    if generations is None:
        generations = _GENERATIONS[device] = _Generations()
    return generations


class _Replay(torch.autograd.Function):
    @staticmethod
    def forward(ctx, entry: _Entry, input: Tensor, gradient_kept: bool, *params: Tensor) -> Tensor:
        ctx.entry, ctx.stamp, ctx.gradient_kept = entry, entry.replays, gradient_kept
        ctx.token = _Token()
        entry.generation.waiting[entry.number] = weakref.ref(ctx.token)
        return entry.output.clone(memory_format=torch.preserve_format)  # out of the graph's memory

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        entry: _Entry = ctx.entry
        grad_input = entry.backward(grad_output, ctx.stamp)
        if grad_input is not None and ctx.gradient_kept:
            grad_input = grad_input.clone()  # a leaf keeps its gradient: not the graph's memory
        return (None, grad_input, None, *entry.param_grad_views())


def _gradient_may_be_kept(input: Tensor) -> bool:
    """Whether autograd may store ``input``'s gradient as it comes, past the step (as a leaf's
    ``.grad``): ``input`` is a leaf, or a view of one (a view's backward hands the gradient on as a
    view of it). The replays' input gradient is graph memory that the layer's next backward
    overwrites."""
    if not input.requires_grad:
        return False
    if input.grad_fn is None:
        return True
    return input._is_view() and input._base.grad_fn is None


_LAYERS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, _Entry]] = weakref.WeakKeyDictionary()


def _key(input: Tensor, params: Sequence[Tensor], choices: tuple) -> tuple:
    kind = input.device.type
    autocast = (torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind))
    return (
        tuple(input.shape),
        input.stride(),
        input.dtype,
        input.device,
        input.requires_grad,
        autocast,
        tuple((p.data_ptr(), p.dtype, p.requires_grad) for p in params),
        choices,
    )


def _forget_replaced_parameters(entries: dict[tuple, _Entry], params: Sequence[Tensor]) -> None:
    """Drops the entries recorded on parameter memory other than this call's (the parameters were
    replaced, e.g. moved to another dtype), with their graphs and what they keep once no pending
    backward holds them, so that the new parameters' signatures may record in their place. Only
    where the layer's keys are full: calls on parameters that change at every call (leaves on new
    memory each time, e.g. through ``torch.func.functional_call``) never record (each is a first
    call), but they do make room this way, and the layer's own parameters then warm up and record
    again."""
    current = tuple(p.data_ptr() for p in params)
    for key in [key for key, entry in entries.items() if entry.param_memory != current]:
        del entries[key]


def graphed_call(
    module: nn.Module, fn: Callable[[Tensor], Tensor], input: Tensor, params: Sequence[Tensor], choices: tuple
) -> Tensor:
    """``fn(input)`` (the layer's eager call, differentiable in ``input`` and ``params``: the
    module's own parameters it reads, through the module's attributes at call time; a signature
    whose recording finds otherwise runs eagerly) through the module's recorded graphs where it may
    (:func:`wanted` is the caller's check); else eagerly. ``choices``: what else ``fn``'s choices
    depend on (:func:`dcls_core.dispatch.state`), part of the key."""
    if any(p.requires_grad and not p.is_leaf for p in params):  # computed (a parametrization): new each call
        return fn(input)
    gradient_kept = _gradient_may_be_kept(input)  # of the caller's input, before a copy below
    if not _dense(input):  # the warm-up, the recording and the replays all see the dense copy's strides
        input = input.clone(memory_format=torch.preserve_format)
    entries = _LAYERS.get(module)
    if entries is None:
        entries = _LAYERS[module] = {}
    key = _key(input, params, choices)
    entry = entries.get(key)
    if entry is None:
        if len(entries) >= MAX_KEYS:
            _forget_replaced_parameters(entries, params)
        if len(entries) >= MAX_KEYS:
            return fn(input)
        entry = entries[key] = _Entry(params)
    entry.calls += 1
    if entry.failed:
        return fn(input)
    if entry.forward_graph is None:
        if torch._C._current_graph_task_id() != -1:  # recordings stay out of autograd's engine
            return fn(input)
        with autotune.device_time():  # the paths the replays run: chosen by what a replay pays
            if entry.calls < 2 or not entry.record(module, fn, input, params, _generations(input.device)):
                return fn(input)  # the first call warms up
    elif entry.may_replay_forward():
        entry.replay_forward(input)
    else:
        return fn(input)  # out of order: this call's memory could still be in use
    return _Replay.apply(entry, input, gradient_kept, *params)


def recorded(module: nn.Module) -> list[tuple[bool, bool, int]]:
    """Per call signature of ``module``: whether its forward and its backward are recorded, and how
    many times the forward replayed since (tests)."""
    return [
        (e.forward_graph is not None, e.backward_graph is not None, e.replays) for e in _LAYERS.get(module, {}).values()
    ]


def held_bytes() -> dict[str, int]:
    """Bytes the recorded graphs keep allocated outside their pools' temporaries, by kind (each
    storage counted once, the layers' parameters not counted): ``inputs`` (the input copies, later
    the input gradients), ``saved`` (what the forwards save for their backwards, beyond the input
    copies and parameters), ``grad_outputs`` (output-gradient buffers of their own, where a forward
    saves its output) and ``param_grads`` (benchmarks)."""
    entries = [e for layer in list(_LAYERS.values()) for e in layer.values()]
    seen = {p.untyped_storage().data_ptr() for e in entries for p in e.params}
    sizes = dict.fromkeys(("inputs", "saved", "grad_outputs", "param_grads"), 0)

    def count(kind: str, tensor: Optional[Tensor]) -> None:
        if tensor is None:
            return
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            sizes[kind] += storage.nbytes()

    for entry in entries:
        count("inputs", entry.static_input)
    for entry in entries:
        for tensor in entry.held:
            count("saved", tensor)
        for tensor in entry.param_grads:
            count("param_grads", tensor)
        if entry.grad_output is not entry.output:  # else the graph's output block: pool memory
            count("grad_outputs", entry.grad_output)
    return sizes
