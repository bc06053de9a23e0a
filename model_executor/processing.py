"""Our multimodal processor: audio in, 16 kHz PCM and placeholder counts out.

It does not call transformers' AF3 or MusicFlamingo processor, so a prompt may hold
several audios (the HF processors insist on one text per audio) and no log-mel is
computed in the API process: the engine gets PCM and the model computes the features on
its device. Each `<sound>` becomes the placeholders HF's processor writes: the audio
tokens, between `<|sound_bos|>` and `<|sound_eos|>` for MusicFlamingo checkpoints.
"""

from collections.abc import Mapping, Sequence
from functools import cached_property

import numpy as np
import torch
from transformers import AudioFlamingo3Config, BatchFeature, MusicFlamingoConfig
from vllm.config.multimodal import MultiModalDummyOptions
from vllm.inputs import MultiModalDataDict
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems, MultiModalDataParser
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
    PromptUpdateDetails,
)

from af3_model_executor.audio_spec import AudioSpec
from af3_model_executor.constants import (
    AUDIO_BOS_TOKEN,
    AUDIO_EOS_TOKEN,
    AUDIO_TOKEN,
    MAX_AUDIOS_PER_PROMPT,
)
from af3_model_executor.think_adapter import AUDIO_VARIANT_KWARG, AUDIO_VARIANTS


class AF3ProcessingInfo(BaseProcessingInfo):
    def get_hf_config(self) -> AudioFlamingo3Config | MusicFlamingoConfig:
        return self.ctx.get_hf_config((AudioFlamingo3Config, MusicFlamingoConfig))

    @cached_property
    def audio_spec(self) -> AudioSpec:
        model_config = self.ctx.model_config
        return AudioSpec.from_pretrained(model_config.model, model_config.revision)

    def get_data_parser(self) -> MultiModalDataParser:
        return MultiModalDataParser(
            target_sr=self.audio_spec.sampling_rate,
            target_channels=1,
            expected_hidden_size=self._get_expected_hidden_size(),
            allow_missing_mm_embeddings=self.allow_missing_mm_embeddings,
        )

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        # No model limit; a default of our own when the operator sets none
        # (--limit-mm-per-prompt).
        configured = "audio" in self.ctx.get_mm_config().limit_per_prompt
        return {"audio": None if configured else MAX_AUDIOS_PER_PROMPT}

    def get_mm_max_tokens_per_item(
        self, seq_len: int, mm_counts: Mapping[str, int]
    ) -> Mapping[str, int]:
        return {"audio": self.audio_spec.max_audio_tokens}

    def audio_token_id(self) -> int:
        return self.get_hf_config().audio_token_id

    @cached_property
    def audio_span_token_ids(self) -> tuple[int, int] | None:
        """The tokens around each audio's placeholders (MusicFlamingo), the ids HF's
        processor writes: the tokenizer's for `<|sound_bos|>` and `<|sound_eos|>`."""
        if not self.audio_spec.audio_span_tokens:
            return None
        tokenizer = self.get_tokenizer()
        return tuple(tokenizer.convert_tokens_to_ids(t) for t in (AUDIO_BOS_TOKEN, AUDIO_EOS_TOKEN))


class AF3DummyInputsBuilder(BaseDummyInputsBuilder[AF3ProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return AUDIO_TOKEN * mm_counts.get("audio", 0)

    def get_dummy_mm_data(
        self,
        seq_len: int,
        mm_counts: Mapping[str, int],
        mm_options: Mapping[str, MultiModalDummyOptions] | None = None,
    ) -> MultiModalDataDict:
        return {
            "audio": self._get_dummy_audios(
                length=self.info.audio_spec.max_samples,
                num_audios=mm_counts.get("audio", 0),
                overrides=(mm_options or {}).get("audio"),
            )
        }


class AF3MultiModalProcessor(BaseMultiModalProcessor[AF3ProcessingInfo]):
    def _call_hf_processor(
        self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]
    ) -> BatchFeature:
        variant = hf_kwargs.get(AUDIO_VARIANT_KWARG, "base")
        if variant not in AUDIO_VARIANTS:
            raise ValueError(f"{AUDIO_VARIANT_KWARG} must be one of {AUDIO_VARIANTS}")
        pcm = []
        for audio in hf_data.get("audio", []):
            samples = np.asarray(audio, dtype=np.float32).reshape(-1)
            self.info.audio_spec.check_length(samples.size)
            pcm.append(torch.from_numpy(samples))
        # Which adaptor each audio goes through; part of the cache keys, as vLLM hashes
        # processor kwargs with the audio.
        variants = [torch.tensor(AUDIO_VARIANTS.index(variant))] * len(pcm)
        return BatchFeature({"audio_pcm": pcm, "audio_variant": variants})

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        return {
            "audio_pcm": MultiModalFieldConfig.batched("audio"),
            "audio_variant": MultiModalFieldConfig.batched("audio"),
        }

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        audio_token_id = self.info.audio_token_id()
        span = self.info.audio_span_token_ids
        spec = self.info.audio_spec
        audio_items = out_mm_kwargs.get("audio", [])

        def replacement(item_idx: int) -> PromptUpdateDetails:
            num_samples = audio_items[item_idx]["audio_pcm"].data.numel()
            tokens = [audio_token_id] * spec.num_audio_tokens(num_samples)
            if span is not None:
                tokens = [span[0], *tokens, span[1]]
            return PromptUpdateDetails.select_token_id(tokens, embed_token_id=audio_token_id)

        return [
            PromptReplacement(modality="audio", target=[audio_token_id], replacement=replacement)
        ]
