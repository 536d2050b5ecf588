"""Tests of ``dcls_core``, in folders that mirror the package's.

This folder shares the package's name: where the repository root is not on ``sys.path`` (``pytest``
run as a script with ``tests/`` on the path), ``import dcls_core`` would find this folder as a
namespace package. Stop with a clear message then instead of hundreds of failures.
"""

from __future__ import annotations

import pytest

import dcls_core

if getattr(dcls_core, "__file__", None) is None:
    raise pytest.UsageError(
        "`import dcls_core` found the test folder tests/dcls_core instead of the package: run "
        "`python -m pytest` from the repository root, or put the root on pytest's pythonpath"
    )
