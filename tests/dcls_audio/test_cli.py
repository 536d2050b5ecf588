"""The console entry point."""

from __future__ import annotations

import subprocess
import sys

from dcls_audio import cli


def test_help_lists_subcommands(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert "dcls-audio" in out


def test_console_script_runs():
    proc = subprocess.run([sys.executable, "-m", "dcls_audio", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "usage: dcls-audio" in proc.stdout
