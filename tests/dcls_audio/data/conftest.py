"""Fixtures of the data tests: a small PANNs file for pack and the readers."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from dcls_audio.data.demo import iter_demo_clips
from dcls_audio.data.hdf5_dataset import write_hdf5


@pytest.fixture(scope="module")
def panns(tmp_path_factory) -> Path:
    """A PANNs file of 12 demo clips and one failed download (empty name, zero clip) at row 5."""
    clips = list(itertools.islice(iter_demo_clips("eval"), 0, 160, 13))[:12]
    names = [name for name, _, _ in clips]
    waves = np.stack([clip for _, clip, _ in clips])
    targets = np.zeros((12, 527), bool)
    for i, (_, _, labels) in enumerate(clips):
        targets[i, labels] = True
    names.insert(5, "")
    waves = np.insert(waves, 5, 0, axis=0)
    targets = np.insert(targets, 5, False, axis=0)
    return write_hdf5(tmp_path_factory.mktemp("panns") / "eval.h5", names, waves, targets)
