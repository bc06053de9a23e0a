"""A realtime session's input audio: the WAV a commit makes decodes to exactly the samples of
the same audio uploaded as a file; G.711 as the standard's tables; the buffer's bound; turn
detection refused until a detector exists."""

import io

import numpy as np
import pytest
import soundfile as sf

from af3_serve.edge.errors import APIError
from af3_serve.inputs.audio import AudioLimits, decode_audio
from af3_serve.inputs.media import b64decode
from af3_serve.realtime.audio import AudioBuffer, InputFormat
from af3_serve.realtime.protocol import AudioFormat, TurnDetection
from af3_serve.realtime.turns import turn_detector

LIMITS = AudioLimits(600.0, 2**30)


@pytest.mark.parametrize("rate", [24000, 16000])
def test_committed_turn_decodes_as_the_uploaded_file(rate: int) -> None:
    rng = np.random.default_rng(0)
    pcm = (rng.standard_normal(rate * 3) * 3000).astype("<i2")
    buffer = AudioBuffer(10.0)
    buffer.format = InputFormat.of(AudioFormat(type="audio/pcm", rate=rate))
    for chunk in np.array_split(pcm, 7):
        buffer.append(chunk.tobytes())
    committed = buffer.take()
    assert buffer.size == 0
    upload = io.BytesIO()
    sf.write(upload, pcm, rate, format="WAV", subtype="PCM_16")
    ours = decode_audio(committed, LIMITS, "audio")
    theirs = decode_audio(upload.getvalue(), LIMITS, "file")
    assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)


def test_g711_is_the_standard() -> None:
    audioop = pytest.importorskip("audioop")
    every = bytes(range(256))
    for kind, reference in (("audio/pcmu", audioop.ulaw2lin), ("audio/pcma", audioop.alaw2lin)):
        fmt = InputFormat.of(AudioFormat(type=kind))
        assert fmt.rate == 8000 and fmt.bytes_per_second == 8000
        assert fmt.pcm16(every) == reference(every, 2)


def test_buffer_bound_and_odd_pcm() -> None:
    buffer = AudioBuffer(1.0)  # 24 kHz PCM: 48,000 bytes
    buffer.append(b"\0" * 40000)
    with pytest.raises(APIError) as refused:
        buffer.append(b"\0" * 10000)
    assert refused.value.code == "input_audio_buffer_full"
    assert buffer.size == 40000  # the refused piece is not taken
    with pytest.raises(APIError) as odd:
        buffer.append(b"\0")
    assert odd.value.code == "invalid_audio"
    with pytest.raises(APIError):
        b64decode("not base64!", "audio")


def test_turn_detection() -> None:
    assert turn_detector(None) is None
    for kind in ("server_vad", "semantic_vad"):
        with pytest.raises(APIError) as refused:
            turn_detector(TurnDetection(type=kind))
        assert refused.value.code == "unsupported_turn_detection"
        assert kind in refused.value.message
