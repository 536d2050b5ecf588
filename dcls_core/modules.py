"""DCLS layers: ``Dcls1d``, ``Dcls2d``, ``Dcls3d``, ``Dcls2_1d``, ``Dcls3_1d``, ``Dcls2dK1d``.

Constructor arguments, defaults, parameter names, shapes and initialisation follow the
reference package ``dcls`` 0.1.1, so state_dicts load both ways with ``strict=True``.
The modules are thin: kernel construction and the convolution are chosen by
:mod:`dcls_core.dispatch`. In eval mode under ``no_grad`` the dense kernel is built once and
reused until a parameter changes (:mod:`dcls_core.construction.cache`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import init

from .construction.cache import KernelCache
from .construction.reference import SIGMA_VERSIONS, VERSIONS, position_axes
from .conv import layer_graphs
from .dispatch import build_kernel, state
from .functional import PADDING_MODES, IntOrTuple, conv_with_kernel, dcls_conv, ntuple

__all__ = ["Dcls1d", "Dcls2_1d", "Dcls2d", "Dcls2dK1d", "Dcls3_1d", "Dcls3d"]


class _DclsBase(nn.Module):
    """Shared machinery of the DCLS layers.

    Parameters (``prefix`` = ``(out, in/groups, *dense_kernel_size)``):
        weight ``(*prefix, kernel_count)``, P ``(n_learned, *prefix, kernel_count)``,
        SIG like P for ``max``/``gauss`` (else None), bias ``(out,)`` or None.
    """

    conv_dims: int = 0  # spatial dims of the convolution
    learned_dims: int = 0  # axes with learned positions
    dense_dims: int = 0  # leading kernel axes that are dense (N_Md layers)
    versions: tuple[str, ...] = VERSIONS
    uniform_position_init: bool = False  # N_Md layers: P ~ U(-lim, lim)
    _ignored_state_keys: tuple[str, ...] = ()

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_count: int,
        stride: IntOrTuple,
        padding: IntOrTuple,
        dilated_kernel_size: IntOrTuple,
        groups: int,
        bias: bool,
        padding_mode: str,
        version: str,
        dense_kernel_size: IntOrTuple = (),
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        for arg, value in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: {arg} must be a positive int, got {value!r}")
        if in_channels % groups:
            raise ValueError(f"{name}: in_channels ({in_channels}) must be divisible by groups ({groups})")
        if out_channels % groups:
            raise ValueError(f"{name}: out_channels ({out_channels}) must be divisible by groups ({groups})")
        if not isinstance(kernel_count, int) or kernel_count < 1:
            raise ValueError(f"{name}: kernel_count must be an int >= 1, got {kernel_count!r}")
        if version not in self.versions:
            raise ValueError(f"{name}: version must be one of {self.versions}, got {version!r}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"{name}: padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        dks = ntuple(dilated_kernel_size, self.learned_dims, "dilated_kernel_size", name)
        if min(dks) < 1:
            raise ValueError(f"{name}: dilated_kernel_size must be >= 1, got {dks}")
        dense = ntuple(dense_kernel_size, self.dense_dims, "dense_kernel_size", name) if self.dense_dims else ()
        if dense and min(dense) < 1:
            raise ValueError(f"{name}: dense_kernel_size must be >= 1, got {dense}")

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_count = kernel_count
        self.stride = ntuple(stride, self.conv_dims, "stride", name)
        self.padding = ntuple(padding, self.conv_dims, "padding", name)
        self.dilated_kernel_size = dks
        if self.dense_dims:
            self.dense_kernel_size = dense
        self.groups = groups
        self.padding_mode = padding_mode
        self.version = version

        factory = {"device": device, "dtype": dtype}
        prefix = (out_channels, in_channels // groups, *dense)
        self.weight = nn.Parameter(torch.empty(*prefix, kernel_count, **factory))
        self.P = nn.Parameter(torch.empty(self.learned_dims, *prefix, kernel_count, **factory))
        if version in SIGMA_VERSIONS:
            self.SIG = nn.Parameter(torch.empty(self.learned_dims, *prefix, kernel_count, **factory))
        else:
            self.register_parameter("SIG", None)
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, **factory))
        else:
            self.register_parameter("bias", None)
        self._kernel_cache = KernelCache()
        self.reset_parameters()

    # -- parameters ---------------------------------------------------------------------
    def position_limits(self) -> tuple[int, ...]:
        """Half-size of the kernel axis each ``P[i]`` moves along (clamp range of ``P[i]``)."""
        axes = position_axes(self.learned_dims, self.version)
        return tuple(self.dilated_kernel_size[a] // 2 for a in axes)

    def reset_parameters(self) -> None:
        """Initialise as ``dcls`` 0.1.1 does (same random stream for the same seed)."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in)
            init.uniform_(self.bias, -bound, bound)
        with torch.no_grad():
            for i, lim in enumerate(self.position_limits()):
                if self.uniform_position_init:
                    init.uniform_(self.P.select(0, i), -lim, lim)
                else:
                    init.normal_(self.P.select(0, i), 0, 0.5).clamp_(-lim, lim)
            if self.SIG is not None:
                init.constant_(self.SIG, 0.23 if self.version == "gauss" else 0.0)

    def clamp_parameters(self) -> None:
        """Clamp each ``P[i]`` into its kernel axis (in place)."""
        with torch.no_grad():
            for i, lim in enumerate(self.position_limits()):
                self.P.select(0, i).clamp_(-lim, lim)

    # -- kernel and convolution -----------------------------------------------------------
    def construct_kernel(self) -> Tensor:
        """The dense kernel ``(out, in/groups, *kernel)`` used by the convolution."""
        kernel = build_kernel(self.weight, self.P, self.SIG, self.dilated_kernel_size, self.version)
        return self._arrange_kernel(kernel)

    def dense_kernel(self) -> Tensor:
        """:meth:`construct_kernel`, cached in eval mode under ``no_grad``.

        The cache is keyed on the parameters' identity, storage, version counter, device and
        dtype, so an optimizer step, ``load_state_dict`` or a move rebuilds it. Writes through
        ``param.data`` bypass the version counter and are not seen: change parameters in place
        under ``torch.no_grad()`` instead.
        """
        if not self._kernel_cacheable():
            return self.construct_kernel()
        return self._kernel_cache.get((self.weight, self.P, self.SIG), self.construct_kernel)

    def _kernel_cacheable(self) -> bool:
        """Eval mode under ``no_grad``, not compiling: :meth:`dense_kernel` reuses its kernel."""
        return not (self.training or torch.is_grad_enabled() or torch.compiler.is_compiling())

    def _arrange_kernel(self, kernel: Tensor) -> Tensor:
        return kernel

    def _check_input(self, input: Tensor) -> None:
        expected_rank = self.conv_dims + 2
        spatial = ", ".join("HW"[i] if self.conv_dims == 2 else f"S{i}" for i in range(self.conv_dims))
        if (
            input.dim() not in (expected_rank, expected_rank - 1)
            or input.shape[-self.conv_dims - 1] != self.in_channels
        ):
            raise ValueError(
                f"{type(self).__name__} expected input of shape (N, {self.in_channels}, {spatial}) "
                f"or ({self.in_channels}, {spatial}), got {tuple(input.shape)}"
            )

    def forward(self, input: Tensor) -> Tensor:
        self._check_input(input)
        if layer_graphs.wanted(self, input):  # an eager training call on CUDA: replayed as CUDA graphs
            return layer_graphs.graphed_call(self, self._forward, input, self._parameters_read(), state())
        return self._forward(input)

    def _forward(self, input: Tensor) -> Tensor:
        """The layer's call, run eagerly (``input`` checked)."""
        return conv_with_kernel(
            input, self.dense_kernel(), self.bias, self.stride, self.padding, self.groups, self.padding_mode
        )

    def _parameters_read(self) -> list[Tensor]:
        """The parameters a call reads (the differentiable inputs of its recorded graphs)."""
        return [p for p in (self.weight, self.P, self.SIG, self.bias) if p is not None]

    def fold(self) -> nn.Module:
        """An equivalent plain ``nn.Conv{1,2,3}d`` holding the current dense kernel."""
        kernel = self.construct_kernel().detach()
        conv_cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[self.conv_dims]
        conv = conv_cls(
            self.in_channels,
            self.out_channels,
            tuple(kernel.shape[2:]),
            stride=self.stride,
            padding=self.padding,
            groups=self.groups,
            bias=self.bias is not None,
            padding_mode=self.padding_mode,
            device=kernel.device,
            dtype=kernel.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(kernel)
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    # -- state dict and repr --------------------------------------------------------------
    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        for key in self._ignored_state_keys:
            state_dict.pop(prefix + key, None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_count={self.kernel_count}"
        if self.dense_dims:
            s += f", dense_kernel_size={self.dense_kernel_size}"
        s += f", dilated_kernel_size={self.dilated_kernel_size}, stride={self.stride}"
        if any(self.padding):
            s += f", padding={self.padding}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s + f", version={self.version}"


class _DclsNd(_DclsBase):
    """DCLS layer whose every kernel axis has learned positions."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_count: int,
        stride: IntOrTuple = 1,
        padding: IntOrTuple = 0,
        dilated_kernel_size: IntOrTuple = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        version: str = "gauss",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_count,
            stride,
            padding,
            dilated_kernel_size,
            groups,
            bias,
            padding_mode,
            version,
            device=device,
            dtype=dtype,
        )

    def _forward(self, input: Tensor) -> Tensor:
        if self._kernel_cacheable():  # the cached dense kernel
            return super()._forward(input)
        return dcls_conv(
            input,
            self.weight,
            self.P,
            self.SIG,
            self.bias,
            self.dilated_kernel_size,
            self.stride,
            self.padding,
            self.groups,
            self.padding_mode,
            self.version,
        )


class Dcls1d(_DclsNd):
    """1-D DCLS convolution. Input ``(N, C_in, L)``; kernel ``(C_out, C_in/groups, dilated_kernel_size)``."""

    conv_dims = learned_dims = 1


class Dcls2d(_DclsNd):
    """2-D DCLS convolution. Input ``(N, C_in, H, W)``; kernel ``(C_out, C_in/groups, kH, kW)``.

    In ``v1``/``max``/``gauss`` ``P[0]`` is the width (last axis) position and ``P[1]`` the
    height one; in ``v0`` ``P[0]`` is height. ``use_implicit_gemm`` is accepted for
    compatibility with ``dcls`` 0.1.1 and ignored (the dispatcher picks the convolution).
    """

    conv_dims = learned_dims = 2

    def __init__(self, *args, use_implicit_gemm: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)


class Dcls3d(_DclsNd):
    """3-D DCLS convolution. Input ``(N, C_in, D, H, W)``; kernel ``(C_out, C_in/groups, kD, kH, kW)``."""

    conv_dims = learned_dims = 3


class _DclsN_Md(_DclsBase):
    """DCLS layer with dense leading kernel axes and learned positions along the last one.

    Positions are initialised uniformly in ``[-lim, lim]`` (``dcls`` 0.1.1's choice for these).
    """

    learned_dims = 1
    versions = ("v1", "max", "gauss")
    uniform_position_init = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_count: int,
        stride: IntOrTuple = 1,
        padding: IntOrTuple = 0,
        dense_kernel_size: IntOrTuple = 1,
        dilated_kernel_size: IntOrTuple = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        version: str = "gauss",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_count,
            stride,
            padding,
            dilated_kernel_size,
            groups,
            bias,
            padding_mode,
            version,
            dense_kernel_size=dense_kernel_size,
            device=device,
            dtype=dtype,
        )


class Dcls3_1d(_DclsN_Md):
    """3-D convolution with a dense ``(kD, kH)`` part and learned positions along width.

    Input ``(N, C_in, D, H, W)``; kernel ``(C_out, C_in/groups, *dense_kernel_size, dilated_kernel_size)``.
    """

    conv_dims = 3
    dense_dims = 2


class Dcls2_1d(_DclsN_Md):
    """2-D convolution with a dense height part and learned positions along width.

    Input ``(N, C_in, H, W)``; kernel ``(C_out, C_in/groups, dense_kernel_size, dilated_kernel_size)``.
    Same formulas as :class:`Dcls3_1d` with one dense axis (``gauss`` uses ``|SIG| + 0.27``
    like every other layer). State dicts that carry the index-grid buffers ``DCK.IDX`` and
    ``DCK.lim`` load with ``strict=True``; those entries are ignored.
    """

    conv_dims = 2
    dense_dims = 1
    _ignored_state_keys = ("DCK.IDX", "DCK.lim")


class Dcls2dK1d(_DclsBase):
    """A learned 1-D DCLS kernel applied as a flat 2-D convolution.

    The positions are learned along ONE axis of the 2-D kernel: ``flat_dim=0`` gives a
    ``(K, 1)`` kernel (positions along height), ``flat_dim=1`` a ``(1, K)`` kernel (positions
    along width), ``K = dilated_kernel_size``. This follows the behaviour of ``dcls`` 0.1.1's
    code (its README states the opposite), so trained weights keep their meaning.
    Input ``(N, C_in, H, W)``; ``stride``/``padding`` are 2-D.
    """

    conv_dims = 2
    learned_dims = 1

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_count: int,
        stride: IntOrTuple = 1,
        padding: IntOrTuple = 0,
        dilated_kernel_size: IntOrTuple = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        version: str = "v1",
        flat_dim: int = 0,
        device=None,
        dtype=None,
    ) -> None:
        if flat_dim not in (0, 1):
            raise ValueError(f"Dcls2dK1d: flat_dim must be 0 or 1, got {flat_dim!r}")
        super().__init__(
            in_channels,
            out_channels,
            kernel_count,
            stride,
            padding,
            dilated_kernel_size,
            groups,
            bias,
            padding_mode,
            version,
            device=device,
            dtype=dtype,
        )
        self.flat_dim = flat_dim

    def _arrange_kernel(self, kernel: Tensor) -> Tensor:
        return kernel.unsqueeze(-1 - self.flat_dim)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", flat_dim={self.flat_dim}"
