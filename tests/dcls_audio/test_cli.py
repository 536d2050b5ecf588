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


def test_pack_bitrate_default_is_the_codec_default():
    from dcls_audio.data.clip_codecs import OPUS_BITRATE

    pack = cli.build_parser()._subparsers._group_actions[0].choices["pack"]
    assert pack.get_default("bitrate") == OPUS_BITRATE
