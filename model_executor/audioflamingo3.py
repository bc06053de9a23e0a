"""AF3ServeForConditionalGeneration: our AF3 and MusicFlamingo for vLLM.

PCM from our processor -> log-mel on the device -> AF-Whisper encoder (vLLM layers,
varlen attention) -> [MusicFlamingo: rotary time embeddings] -> adaptor -> embeddings
that replace the `<sound>` placeholders in the prefill of vLLM's own paged-attention
Qwen2 decoder. The checkpoint's config (its `model_type`) says which family it is.
"""

from collections.abc import Iterable

import torch
from safetensors.torch import load_file
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import (
    MultiModalEmbeddings,
    SupportsLoRA,
    SupportsMultiModal,
    SupportsPP,
)
from vllm.model_executor.models.module_mapping import MultiModelKeys
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    init_vllm_registered_model,
    maybe_prefix,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.sequence import IntermediateTensors

from af3_model_executor.audio_features import LogMel
from af3_model_executor.audio_spec import AudioSpec
from af3_model_executor.constants import AUDIO_TOKEN
from af3_model_executor.encoder import AF3AudioEncoder, AF3Projector
from af3_model_executor.families import family_of
from af3_model_executor.processing import (
    AF3DummyInputsBuilder,
    AF3MultiModalProcessor,
    AF3ProcessingInfo,
)
from af3_model_executor.rotary_time import RotaryTimeEmbedding
from af3_model_executor.think_adapter import AUDIO_VARIANTS, THINK_PROJECTOR_CONFIG_KEY
from af3_model_executor.weight_names import official_name


@MULTIMODAL_REGISTRY.register_processor(
    AF3MultiModalProcessor, info=AF3ProcessingInfo, dummy_inputs=AF3DummyInputsBuilder
)
class AF3ServeForConditionalGeneration(nn.Module, SupportsMultiModal, SupportsPP, SupportsLoRA):
    packed_modules_mapping = {
        "qkv_proj": ["q_proj", "k_proj", "v_proj"],
        "gate_up_proj": ["gate_proj", "up_proj"],
    }

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        return AUDIO_TOKEN if modality.startswith("audio") else None

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        model_config = vllm_config.model_config
        self.config = config
        self.family = family_of(config)
        self.audio_spec = AudioSpec.from_pretrained(model_config.model, model_config.revision)

        with self._mark_tower_model(vllm_config, "audio"):
            self.log_mel = LogMel(self.audio_spec)
            self.audio_tower = AF3AudioEncoder(
                vllm_config, config.audio_config, prefix=maybe_prefix(prefix, "audio_tower")
            )
            self.rotary_time = (
                RotaryTimeEmbedding(config, self.audio_spec) if self.family.rotary_time else None
            )
            self.multi_modal_projector = self._projector(prefix, "multi_modal_projector")
            # Thinking mode's retrained adaptor, when its adapter ships one.
            self.think_projector_file = getattr(config, THINK_PROJECTOR_CONFIG_KEY, None)
            self.think_projector = (
                self._projector(prefix, "think_projector") if self.think_projector_file else None
            )

        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config,
                hf_config=config.text_config,
                prefix=maybe_prefix(prefix, "language_model"),
                architectures=["Qwen2ForCausalLM"],
            )
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def _projector(self, prefix: str, name: str) -> AF3Projector:
        config = self.config
        return AF3Projector(
            config.audio_config.hidden_size,
            config.text_config.hidden_size,
            config.projector_hidden_act,
            config.projector_bias,
            prefix=maybe_prefix(prefix, name),
        )

    def get_mm_mapping(self) -> MultiModelKeys:
        return MultiModelKeys.from_string_field(
            language_model="language_model.",
            connector="multi_modal_projector.",
            tower_model="audio_tower.",
        )

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        """One [num_audio_tokens, hidden] tensor per audio of the batch."""
        audio_pcm = kwargs.get("audio_pcm")
        if audio_pcm is None:
            return []
        audios = list(audio_pcm)  # a list, or a stacked tensor when lengths agree
        windows, frame_counts = self.log_mel.split_windows(audios)
        tokens = self.audio_tower(self.log_mel(windows), frame_counts)
        if self.rotary_time is not None:
            spec = self.audio_spec
            tokens = self.rotary_time(tokens, [spec.window_frame_counts(a.numel()) for a in audios])
        counts = [self.audio_spec.num_audio_tokens(audio.numel()) for audio in audios]
        if self.think_projector is None:
            return torch.split(self.multi_modal_projector(tokens), counts)
        think = AUDIO_VARIANTS.index("think")
        variants = kwargs.get("audio_variant")
        variants = [0] * len(audios) if variants is None else [int(v) for v in variants]
        return [
            (self.think_projector if variant == think else self.multi_modal_projector)(t)
            for t, variant in zip(torch.split(tokens, counts), variants, strict=True)
        ]

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor | IntermediateTensors:
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(
            input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds
        )

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        # The hub's names, or any other naming of the same weights (save_pretrained's, ...).
        weights = ((official_name(name) or name, tensor) for name, tensor in weights)
        loaded = AutoWeightsLoader(self).load_weights(weights)
        if self.think_projector is not None:
            think = load_file(self.think_projector_file)
            names = AutoWeightsLoader(self.think_projector).load_weights(
                (name.removeprefix("multi_modal_projector."), tensor)
                for name, tensor in think.items()
            )
            loaded |= {f"think_projector.{name}" for name in names}
        return loaded
