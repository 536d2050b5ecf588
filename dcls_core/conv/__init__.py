"""The convolution paths: one folder each, all computing what ``F.conv{1,2,3}d`` computes with a
dense ``(C_out, C_in/groups, *kernel)`` kernel.

Each path package (:mod:`.reference`, :mod:`.fft`, :mod:`.direct`) exports the same contract:

* ``NAME``: its name in ``DCLS_CONV`` and :func:`dcls_core.dispatch.forced`;
* ``supports(input, kernel_shape, stride, groups) -> bool``: it computes this call;
* ``pays(input, kernel_shape, stride, groups) -> bool``: its cost rule, true where ``auto`` should
  take it (asked only where it supports the call);
* ``convolve(input, kernel, bias, stride, padding, groups, padding_mode) -> Tensor``: the
  convolution, equal to :func:`dcls_core.conv.reference.convolve`;
* optionally ``prepare(input, kernel_shape, bias, stride, padding, groups, padding_mode) ->
  common.PreparedConv``: the call laid out for the path's registered op, so that
  :mod:`dcls_core.conv.layer_node` can run the construction and the convolution as one autograd node
  (the direct and matrix paths have it).

:mod:`dcls_core.dispatch` holds the registry (the paths in order of preference). Shared pieces:
:mod:`.common` (argument checks, padding modes, the bias gradient) and :mod:`.cost` (where the
reference ``F.conv`` is slow on CUDA). A new path is one folder plus one line in the registry.
"""

__all__: list[str] = []
