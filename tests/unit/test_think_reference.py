"""The reference that thinking mode is held to (tests/e2e/test_think.py): transformers with
PEFT's LoRA and the adapter's non-LoRA weights, as the release loads them. No engine."""

from pathlib import Path

from af3_model_executor.think_adapter import THINK_SUFFIX
from tests.support.audio_files import as_sent, make_clip
from tests.support.oracles import HFReference, HFThinkReference, reference_text

QUESTION = "What is said in the audio?"
MAX_TOKENS = 12  # as tests/e2e/test_think.py asks


def test_the_non_lora_weights_matter(tiny_checkpoint: Path, speech) -> None:
    """Ignoring non_lora_trainables.bin (what `strict=False` loaders risk) changes answers,
    so tests/e2e/test_think.py would catch a server that skipped it."""
    from peft import PeftModel

    clip = as_sent(make_clip(speech, 7.3))
    hf_think = HFThinkReference(tiny_checkpoint, tiny_checkpoint / "think")
    lora_only = HFReference(tiny_checkpoint)
    lora_only.model = PeftModel.from_pretrained(lora_only.model, tiny_checkpoint / "think")
    question = f"{QUESTION} {THINK_SUFFIX}"
    without_non_lora = reference_text(tiny_checkpoint, lora_only, clip, question, MAX_TOKENS)
    assert without_non_lora != reference_text(tiny_checkpoint, hf_think, clip, question, MAX_TOKENS)
