"""A MusicFlamingo checkpoint through the HTTP edge, in-process on the fake engine (our real
processor for the family)."""

from af3_model_executor.constants import AUDIO_BOS_TOKEN, AUDIO_EOS_TOKEN, AUDIO_TOKEN
from tests.support.audio_files import audio_part, make_clip
from tests.support.in_process import in_process_server


async def test_a_music_flamingo_request_through_the_http_edge(
    tiny_music_flamingo, tmp_path, speech
) -> None:
    """On the fake engine (our real processor): /v1/models shows the checkpoint's limit, the
    audio's placeholders sit between <|sound_bos|> and <|sound_eos|>, and audio past the
    limit is refused naming the limit and the model."""
    async with in_process_server(tiny_music_flamingo, tmp_path) as app:
        (card,) = (await app.client.get("/v1/models")).json()["data"]
        assert card["max_audio_seconds"] == 1200
        body = {
            "model": card["id"],
            "max_tokens": 3,
            "messages": [{"role": "user", "content": [audio_part(make_clip(speech, 3.0))]}],
        }
        response = await app.client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        (prompt,) = app.engine.prompts.values()
        bos, eos, sound = app.engine.tokenizer.convert_tokens_to_ids(
            [AUDIO_BOS_TOKEN, AUDIO_EOS_TOKEN, AUDIO_TOKEN]
        )
        start = prompt.index(bos)
        assert prompt[start : start + 77] == [bos, *[sound] * 75, eos]
        assert response.json()["usage"]["prompt_tokens_details"]["audio_tokens"] == 75

        body["messages"][0]["content"] = [audio_part(make_clip(speech, 1201.0), "flac")]
        response = await app.client.post("/v1/chat/completions", json=body)
        error = response.json()["error"]
        assert response.status_code == 413 and error["code"] == "audio_too_long"
        assert "at most 1200 s" in error["message"] and card["id"] in error["message"]
