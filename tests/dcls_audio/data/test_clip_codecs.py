"""FLAC and Opus clip bytes: FLAC gives the int16 samples back exactly; Opus decodes to clips whose
log-mel spectrogram (the model's input) stays close to the original's; bad bytes are reported."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import soundfile as sf
import torch

from dcls_audio.data import clip_codecs
from dcls_audio.data.clip_codecs import ClipDecodeError, check_encoder, decode_clip_bytes, encode_clip
from dcls_audio.data.demo import iter_demo_clips

AF = pytest.importorskip("torchaudio.functional", reason="torchaudio (the test oracle) is not installed")

CLIPS = list(itertools.islice(iter_demo_clips("eval"), 0, 160, 40))  # four demo clips, labels of all kinds


def test_flac_is_lossless_and_plain_flac():
    for _, clip, _ in CLIPS:
        data = encode_clip(clip, "flac")
        assert np.array_equal(decode_clip_bytes(data, "flac", len(clip)), clip)
        samples, rate = sf.read(io.BytesIO(data), dtype="int16")  # any FLAC reader gets the same clip
        assert rate == 32000 and np.array_equal(samples, clip)
    extremes = np.array([-32768, 32767, 0, 1, -1] * 1000, dtype=np.int16)
    assert np.array_equal(decode_clip_bytes(encode_clip(extremes, "flac"), "flac", 5000), extremes)


def test_decoded_clips_are_padded_or_cut_to_clip_samples():
    clip = CLIPS[0][1][:32000]
    data = encode_clip(clip, "flac")
    longer = decode_clip_bytes(data, "flac", 40000)
    assert np.array_equal(longer[:32000], clip) and not longer[32000:].any()
    assert np.array_equal(decode_clip_bytes(data, "flac", 16000), clip[:16000])
    assert decode_clip_bytes(encode_clip(clip, "opus"), "opus", 40000).shape == (40000,)


def _logmel_db(clip: np.ndarray) -> torch.Tensor:
    """Log-mel in dB as torchaudio computes it (the oracle of the front end), (128, frames)."""
    x = torch.from_numpy(clip.astype(np.float32) / 32768)
    spec = torch.stft(x, 1024, 320, window=torch.hann_window(1024), return_complex=True).abs() ** 2
    fb = AF.melscale_fbanks(513, 50.0, 14000.0, 128, 32000)
    return AF.amplitude_to_DB((spec.T @ fb).T, 10.0, 1e-10, 0.0)


def test_opus_decodes_close_to_the_original():
    """Measure: per clip, the mean absolute log-mel difference is <= 1.5 dB and the log-mels
    correlate >= 0.97 (72 kbit/s, 60 ms packets on the demo sounds: 0.85-1.3 dB and >= 0.98 measured)."""
    for name, clip, _ in CLIPS:
        data = encode_clip(clip, "opus")
        assert len(data) <= clip.nbytes / 6, name
        decoded = decode_clip_bytes(data, "opus", len(clip))
        assert decoded.dtype == np.int16 and decoded.shape == clip.shape
        a, b = _logmel_db(clip), _logmel_db(decoded)
        assert (a - b).abs().mean() <= 1.5, name
        assert np.corrcoef(a.flatten(), b.flatten())[0, 1] >= 0.97, name


def test_opus_packets_hold_60_ms():
    """Fewer, longer packets are what makes decoding cheaper; check the Ogg stream itself."""
    import av

    clip = CLIPS[2][1]  # 10 s
    with av.open(io.BytesIO(encode_clip(clip, "opus")), "r", format="ogg") as container:
        packets = [p for p in container.demux(audio=0) if p.size]
    seconds = len(clip) / 32000
    assert abs(len(packets) - seconds / (clip_codecs.OPUS_PACKET_MS / 1000)) <= 2, len(packets)


def test_opus_bitrate_sets_the_size():
    clip = CLIPS[1][1]
    small, large = len(encode_clip(clip, "opus", 24_000)), len(encode_clip(clip, "opus", 96_000))
    assert small < large / 2


@pytest.mark.parametrize("codec", ["flac", "opus"])
def test_bytes_that_do_not_decode_are_a_clip_decode_error(codec):
    for data in (b"", b"\x00" * 100, bytes(range(256)) * 10):
        with pytest.raises(ClipDecodeError) as err:
            decode_clip_bytes(data, codec, 32000)
        assert "\n" not in err.value.reason and err.value.reason


def test_check_encoder_fails_before_any_work_when_the_encoder_is_missing(monkeypatch):
    check_encoder("pcm"), check_encoder("flac"), check_encoder("opus")
    with pytest.raises(ValueError, match="--codec must be one of"):
        check_encoder("mp3")
    with pytest.raises(ValueError, match="--bitrate"):
        check_encoder("opus", bitrate=1000)

    def no_libopus(*args, **kwargs):
        raise ValueError("Unknown encoder 'libopus'")

    monkeypatch.setattr(clip_codecs, "_encode_opus", no_libopus)
    with pytest.raises(ValueError, match="--codec opus: this machine cannot encode it .*libopus"):
        check_encoder("opus")
