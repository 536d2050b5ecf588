"""Triton GPU programs run on the CPU under Triton's interpreter (``TRITON_INTERPRET=1``).

The ``conftest.py`` of each folder of interpreted tests (``tests/dcls_core/interpreter``,
``tests/dcls_audio/features/interpreter``) imports this module's collection hook.

The variable must be set before Triton is first imported, and the main test process may have
imported Triton already (``torch.compile`` does). So, in the main run, each test module of such a
folder is collected as ONE item, ``under_triton_interpreter``, that runs pytest on that module in
a child process with ``TRITON_INTERPRET=1`` (failing with the child's report). In the child, where
the variable is set, the hook lets pytest collect the module's tests as usual, and importing this
module adapts the interpreter to recent numpy.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
ROOT = Path(__file__).resolve().parents[1]
HAS_TRITON = importlib.util.find_spec("triton") is not None
CHILD_TIMEOUT_S = 600

if INTERPRETED and HAS_TRITON:
    import numpy as np
    import triton.runtime.interpreter as interp

    # Triton's interpreter turns 1-element scalar arrays into loop bounds with int(), which recent
    # numpy refuses; read the element instead (this only affects interpreted runs).
    _patch_lang_tensor = interp._patch_lang_tensor

    def _patched(tensor, scope):
        _patch_lang_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    interp._patch_lang_tensor = _patched


class ChildFailed(Exception):
    """The child pytest run failed; the message is its report."""


class InterpreterRun(pytest.Item):
    """Runs pytest on :attr:`path` in a child process with ``TRITON_INTERPRET=1``."""

    def runtest(self) -> None:
        env = dict(os.environ, TRITON_INTERPRET="1")
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(self.path)]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
        if proc.returncode != 0:
            raise ChildFailed(
                f"{' '.join(cmd)} (TRITON_INTERPRET=1) exited with {proc.returncode}:\n"
                f"{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
            )

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ChildFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, None, f"{self.path.name} under TRITON_INTERPRET=1"


class InterpreterModule(pytest.File):
    def collect(self):
        item = InterpreterRun.from_parent(self, name="under_triton_interpreter")
        if not HAS_TRITON:
            item.add_marker(pytest.mark.skip(reason="triton not installed"))
        yield item


def pytest_pycollect_makemodule(module_path, parent):
    if not INTERPRETED:
        return InterpreterModule.from_parent(parent, path=module_path)
    return None
