"""Functions that `LLM.apply_model` runs inside a vLLM worker, on the loaded model.

They live in the package (not in a test file) because the worker must import them
by name. Tests use them to prove which class serves requests and to read audio
embeddings; the encoder benchmark uses them to time the model's own audio path.
"""

import numpy as np
import torch
from torch import nn


def model_class_name(model: nn.Module) -> str:
    return type(model).__name__


@torch.inference_mode()
def audio_embeddings(model: nn.Module, audios: list[np.ndarray]) -> list[torch.Tensor]:
    """Embeddings (encoder + adaptor) of 16 kHz clips, one tensor a clip, on the CPU."""
    pcm = [torch.from_numpy(np.asarray(audio, dtype=np.float32)) for audio in audios]
    return [e.float().cpu() for e in model.embed_multimodal(audio_pcm=pcm)]
