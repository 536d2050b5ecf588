"""Inference: tag audio files with a checkpoint (``dcls-audio infer``): input expansion,
streamed decoding into 10 s windows, the batched tagger, and the table/JSON/CSV output.

Names are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "run_infer": "app",
    "load_tagging_model": "loader",
    "AudioTagger": "tagger",
    "FileTags": "tagger",
    "tag_files": "tagger",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from .app import run_infer
    from .loader import load_tagging_model
    from .tagger import AudioTagger, FileTags, tag_files
