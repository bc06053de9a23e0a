"""A transcript's segments (its 30-s windows, with their bounds as times) as SRT or WebVTT
subtitles."""

from af3_serve.speech.protocol import TranscriptionSegment


def _clock(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def to_srt(segments: list[TranscriptionSegment]) -> str:
    cues = [
        f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text or '...'}\n"
        for i, s in enumerate(segments, start=1)
    ]
    return "\n".join(cues)


def to_vtt(segments: list[TranscriptionSegment]) -> str:
    cues = [
        f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text or '...'}\n" for s in segments
    ]
    return "WEBVTT\n\n" + "\n".join(cues)
