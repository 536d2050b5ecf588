"""The checkpoints released with the DCLS-Audio paper (Zenodo record 8370979) and where we look for them.

The paper's README links four distinct files. Its two baseline rows for ConvNeXt-T and
FastViT-SA24 (depthwise 7x7) point to the DCLS files, so no baseline file is published
for ``convnext_audio_tiny`` and ``fastvit_audio_sa24``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CHECKPOINT_DIR_ENV", "RELEASED_CHECKPOINTS", "ZENODO_RECORD", "checkpoint_dirs"]

ZENODO_RECORD = "https://zenodo.org/record/8370979"

#: model name -> URL of its released ``.pth`` (upstream layout).
RELEASED_CHECKPOINTS: dict[str, str] = {
    name: f"{ZENODO_RECORD}/files/{name}.pth"
    for name in (
        "convnext_dcls_audio_tiny",
        "fastvit_dcls_audio_sa24",
        "convformer_audio_s18",
        "convformer_dcls_audio_s18",
    )
}

#: Environment variable naming an extra folder that holds ``<model>.pth`` files.
CHECKPOINT_DIR_ENV = "DCLS_AUDIO_CHECKPOINTS"


def checkpoint_dirs() -> list[Path]:
    """Folders searched for ``<model>.pth``: $DCLS_AUDIO_CHECKPOINTS, ./checkpoints, <repo>/checkpoints."""
    dirs = []
    if os.environ.get(CHECKPOINT_DIR_ENV):
        dirs.append(Path(os.environ[CHECKPOINT_DIR_ENV]).expanduser())
    dirs.append(Path.cwd() / "checkpoints")
    dirs.append(Path(__file__).resolve().parents[2] / "checkpoints")
    unique: list[Path] = []
    for d in dirs:
        if d.resolve() not in [u.resolve() for u in unique]:
            unique.append(d)
    return unique
