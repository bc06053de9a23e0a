"""A realtime session's input audio: the WAV a commit makes decodes to exactly the samples of
the same audio uploaded as a file; G.711 as the standard's tables; the buffer's bound and
its timeline; server VAD on real speech."""

import base64
import io

import numpy as np
import pytest
import soundfile as sf

from af3_model_executor.audio_spec import AudioSpec
from af3_serve.edge.errors import APIError
from af3_serve.inputs.audio import AudioLimits, decode_audio
from af3_serve.inputs.media import b64decode
from af3_serve.realtime.audio import AudioBuffer, InputFormat, wav
from af3_serve.realtime.prefill import decoded_clips, finished_windows
from af3_serve.realtime.protocol import AudioFormat, TurnDetection
from af3_serve.realtime.turns import ServerVad, SpeechBoundary, turn_detector
from tests.support.audio_files import at_24k, pcm16

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


def test_turn_detection_settings() -> None:
    assert turn_detector(None, 0.0) is None
    detector = turn_detector(TurnDetection(type="server_vad"), 0.0)
    assert isinstance(detector, ServerVad)
    c = detector.config  # OpenAI's defaults
    assert (c.threshold, c.prefix_padding_ms, c.silence_duration_ms) == (0.5, 300, 500)
    assert c.create_response and c.interrupt_response
    refusals = [
        (TurnDetection(type="semantic_vad"), "unsupported_turn_detection"),
        (TurnDetection(type="server_vad", idle_timeout_ms=1000), "unsupported_turn_detection"),
        (TurnDetection(type="push_to_talk"), "invalid_value"),
    ]
    for config, code in refusals:
        with pytest.raises(APIError) as refused:
            turn_detector(config, 0.0)
        assert refused.value.code == code


def heard(audio: np.ndarray, chunk_s: float, origin_ms: float = 0.0, **settings: int) -> list:
    detector = ServerVad(TurnDetection(type="server_vad", **settings), origin_ms)
    data, step = pcm16(audio), max(int(chunk_s * 24000) * 2, 2)
    return [b for i in range(0, len(data), step) for b in detector.feed(data[i : i + step], 24000)]


def test_server_vad_hears_turns_across_appends(speech: np.ndarray) -> None:
    """1 s of silence, 3 s of speech, a 1-s pause, 2 s of speech, 1 s of silence: two turns,
    whatever the appends' sizes (the model's state goes on across them)."""
    silence = np.zeros(24000, np.float32)
    audio = np.concatenate([silence, at_24k(speech, 3.0), silence, at_24k(speech, 2.0), silence])
    turns = heard(audio, 0.1)
    assert [b.kind for b in turns] == ["started", "stopped", "started", "stopped"]
    assert heard(audio, 0.02) == heard(audio, 7.0) == turns
    start, stop = turns[0].audio_ms, turns[1].audio_ms
    assert 1000 - 300 - 32 <= start <= 1000 and 4000 + 500 <= stop <= 5000
    # The turn's start includes the prefix padding; its end, the silence that ended it.
    padded = heard(audio, 0.1, prefix_padding_ms=0, silence_duration_ms=800)
    assert padded[0].audio_ms == start + 300
    assert abs((padded[1].audio_ms - 800) - (stop - 500)) < 32  # whole frames of silence
    # A longer silence_duration_ms keeps the 1-s pause inside one turn.
    longer = np.concatenate([audio, silence])
    assert [b.kind for b in heard(longer, 0.1, silence_duration_ms=1200)] == ["started", "stopped"]
    # A detector set mid-session counts from the audio before it.
    shifted = heard(audio, 0.1, origin_ms=2500.0)
    assert shifted == [SpeechBoundary(b.kind, b.audio_ms + 2500) for b in turns]


def test_server_vad_hears_nothing_in_silence_and_noise() -> None:
    rng = np.random.default_rng(0)
    quiet = (rng.standard_normal(24000 * 3) * 0.001).astype(np.float32)
    assert heard(quiet, 0.1) == []


def test_buffer_timeline() -> None:
    """Positions are ms of all the audio appended; a commit up to a position keeps the rest."""
    buffer = AudioBuffer(10.0)  # 24-kHz PCM: 48 bytes a millisecond
    buffer.append(bytes(48 * 1000))
    buffer.drop_before(700)
    assert (buffer.start_ms, buffer.end_ms, buffer.size) == (700, 1000, 48 * 300)
    buffer.append(bytes(range(256)) * 48 * 5)  # 1280 ms more
    wav = buffer.take(until_ms=1500)
    assert len(wav) == 44 + 48 * 800
    assert (buffer.start_ms, buffer.end_ms) == (1500, 2280)
    buffer.drop_before(100)  # before the start: nothing to drop
    assert buffer.start_ms == 1500
    buffer.clear()
    assert (buffer.start_ms, buffer.size) == (2280, 0)


def test_finished_windows_are_final_and_cut_as_the_whole() -> None:
    """A turn's first windows, decoded from the turn so far (its last second left open),
    are the whole turn's first clips sample for sample: their prefill is the answer's."""
    spec = AudioSpec()
    rng = np.random.default_rng(7)
    turn = pcm16(rng.standard_normal(24000 * 95).astype(np.float32) * 0.1)
    limits = AudioLimits(600, 2**31)
    whole = decoded_clips(wav(turn, 24000), limits, spec, "a")
    samples = [decode_audio(base64.b64decode(c), limits, "a") for c in whole]
    assert [s.size for s in samples] == [spec.window_samples] * 3 + [5 * 16000]
    assert np.array_equal(np.concatenate(samples), decode_audio(wav(turn, 24000), limits, "a"))
    assert finished_windows(30.9, spec) == 0
    for seconds in (31.0, 64.0, 90.0, 91.0):
        windows = finished_windows(seconds, spec)
        assert windows == int((seconds - 1) // 30)
        so_far = wav(turn[: int(seconds * 24000) * 2], 24000)
        assert decoded_clips(so_far, limits, spec, "a", windows) == whole[:windows]
    assert finished_windows(300.0, AudioSpec(audio_span_tokens=True)) == 0
