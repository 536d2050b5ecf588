"""The tests of this folder run in a child process under Triton's interpreter: see
``tests/triton_interpreter.py``."""

from triton_interpreter import pytest_pycollect_makemodule  # noqa: F401 - the collection hook
