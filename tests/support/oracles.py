"""The two reference implementations our model is checked against, on the same weights:
HF transformers' AF3 and MusicFlamingo (in-process) and vLLM's built-in AF3 (a subprocess
with our plugin switched off)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from af3_model_executor.constants import AUDIO_TOKEN
from af3_model_executor.families import AF3, checkpoint_family

PROMPT_QUESTION = "What is said in the audio?"


def chat_prompt(checkpoint: Path, question: str = PROMPT_QUESTION, num_audios: int = 1) -> str:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    content = [{"type": "audio"}] * num_audios + [{"type": "text", "text": question}]
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )


def answer_text(text: str | None) -> str:
    """The random tokenizer's byte tokens may end mid-character: vLLM holds such a tail
    back, a plain decode shows it as U+FFFD. Everything before it must match."""
    return (text or "").rstrip("\ufffd")


def reference_text(
    checkpoint: Path, reference: "HFReference", audio: np.ndarray, question: str, max_tokens: int
) -> str:
    """`reference`'s greedy answer to `question` about `audio`, as answer_text compares it."""
    from transformers import AutoTokenizer

    tokens = reference.generate(chat_prompt(checkpoint, question), audio, max_tokens)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    return answer_text(tokenizer.decode(tokens, skip_special_tokens=True))


class HFReference:
    """transformers' AudioFlamingo3ForConditionalGeneration in float32, or its
    MusicFlamingoForConditionalGeneration for a checkpoint of that family."""

    def __init__(self, checkpoint: Path) -> None:
        from transformers import (
            AudioFlamingo3ForConditionalGeneration,
            AutoProcessor,
            MusicFlamingoForConditionalGeneration,
        )

        self.rotary_time = checkpoint_family(checkpoint) is not AF3
        model_class = (
            MusicFlamingoForConditionalGeneration
            if self.rotary_time
            else AudioFlamingo3ForConditionalGeneration
        )
        self.processor = AutoProcessor.from_pretrained(checkpoint)
        self.model = model_class.from_pretrained(checkpoint, dtype=torch.float32).eval()

    def _inputs(self, prompt: str, audio: np.ndarray) -> dict:
        return self.processor(text=[prompt], audio=[audio], return_tensors="pt")

    @torch.inference_mode()
    def embeddings(self, audio: np.ndarray) -> torch.Tensor:
        inputs = self._inputs(AUDIO_TOKEN, audio)
        # MusicFlamingo's rotary time embeddings take each window's time from input_ids.
        extra = (inputs["input_ids"],) if self.rotary_time else ()
        return self.model.get_audio_features(
            inputs["input_features"], inputs["input_features_mask"], *extra
        ).pooler_output

    def prompt_token_ids(self, prompt: str, audio: np.ndarray) -> list[int]:
        return self._inputs(prompt, audio)["input_ids"][0].tolist()

    @torch.inference_mode()
    def generate(self, prompt: str, audio: np.ndarray, max_tokens: int) -> list[int]:
        inputs = self._inputs(prompt, audio)
        out = self.model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
        return out[0, inputs["input_ids"].shape[1] :].tolist()

    def multi_audio_inputs(self, prompt_token_ids: list[int], audios: list[np.ndarray]) -> dict:
        """Inputs for a prompt with several audios, which HF's processor refuses (one text
        per audio): every audio's windows in order, the prompt's tokens as given."""
        per_audio = [self._inputs(AUDIO_TOKEN, audio) for audio in audios]
        return {
            "input_ids": torch.tensor([prompt_token_ids]),
            "attention_mask": torch.ones(1, len(prompt_token_ids), dtype=torch.long),
            "input_features": torch.cat([i["input_features"] for i in per_audio]),
            "input_features_mask": torch.cat([i["input_features_mask"] for i in per_audio]),
        }

    @torch.inference_mode()
    def generate_from(self, inputs: dict, max_tokens: int) -> list[int]:
        out = self.model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
        return out[0, inputs["input_ids"].shape[1] :].tolist()

    @torch.inference_mode()
    def next_token_logprobs(self, prompt: str, audio: np.ndarray) -> torch.Tensor:
        """Log-probabilities of the first generated token, over the vocabulary."""
        logits = self.model(**self._inputs(prompt, audio)).logits[0, -1]
        return torch.log_softmax(logits.float(), dim=-1)


class HFThinkReference(HFReference):
    """The same model with the thinking adapter as its release loads it: PEFT's LoRA, then
    `non_lora_trainables.bin` into the PEFT model, every key of it used."""

    def __init__(self, checkpoint: Path, think_dir: Path) -> None:
        from peft import PeftModel

        super().__init__(checkpoint)
        self.model = PeftModel.from_pretrained(self.model, think_dir).eval()
        non_lora = torch.load(think_dir / "non_lora_trainables.bin", weights_only=True)
        assert non_lora, "the tiny adapter must retrain something besides the LoRA"
        result = self.model.load_state_dict(non_lora, strict=False)
        assert not result.unexpected_keys, result.unexpected_keys


def builtin_vllm_generate(
    checkpoint: Path, prompt: str, audios: list[np.ndarray], max_tokens: int, workdir: Path
) -> tuple[list[list[int]], str]:
    """Greedy tokens from vLLM's built-in AF3, run with no plugin loaded (VLLM_PLUGINS is
    an allowlist naming none of ours). Returns the tokens and the model class it used."""
    audio_file = workdir / "audios.npz"
    np.savez(audio_file, *audios)
    env = {**os.environ, "VLLM_PLUGINS": "no-plugin-at-all"}
    result = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("builtin_vllm_oracle.py")),
            str(checkpoint),
            prompt,
            str(audio_file),
            str(max_tokens),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    line = next(s for s in result.stdout.splitlines() if s.startswith("ORACLE "))
    answer = json.loads(line.removeprefix("ORACLE "))
    return answer["tokens"], answer["model_class"]
