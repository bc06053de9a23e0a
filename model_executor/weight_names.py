"""Every naming of AF3's (and MusicFlamingo's: the same modules) weights, in one table.

- official: the files of `nvidia/audio-flamingo-3-hf`, the names our model and vLLM load;
- transformers: `AudioFlamingo3ForConditionalGeneration`'s module tree in memory (its
  `state_dict()`, and the names of PEFT adapters trained on it);
- saved: what transformers 5.19's `save_pretrained` writes for these classes (AF3's and
  MusicFlamingo's): the hub names, but the decoder body one `model.` deeper
  (`language_model.model.model.*`: its renaming of the hub names is undone twice on the
  way out, and `from_pretrained` reads it back the same way);
- original: NVIDIA's llava layout, one folder a component (`llm/`, `sound_tower/`,
  `sound_mm_projector/`); the llava model names its modules the same, under `model.` in
  memory (`model.llm.*`, as its thinking adapter's `non_lora_trainables.bin` may).
PEFT writes every name under `base_model.model.`.

The renames are prefix maps, read the way vLLM's `WeightsMapper(orig_to_new_prefix=...)`
reads them. The table does not build a `WeightsMapper`: `af3-convert` and
`af3-tiny-checkpoint` use it without vLLM, whose import costs seconds and, on CPU builds,
writes a notice to stderr that would break the converter's one-line error answer.
"""

PEFT_PREFIX = "base_model.model."
# The llava model's own prefix in memory, in front of the original names.
_LLAVA_PREFIX = "model."

# One row a module: (official, transformers, original).
_TABLE = (
    ("language_model.model.", "model.language_model.", "llm.model."),
    ("language_model.lm_head.", "lm_head.", "llm.lm_head."),
    ("audio_tower.", "model.audio_tower.", "sound_tower."),
    (
        "multi_modal_projector.linear_1.",
        "model.multi_modal_projector.linear_1.",
        "sound_mm_projector.layers.0.",
    ),
    (
        "multi_modal_projector.linear_2.",
        "model.multi_modal_projector.linear_2.",
        "sound_mm_projector.layers.2.",
    ),
)

# The one prefix save_pretrained writes differently (a longer form of an official prefix,
# so it is tried first; Qwen2's module tree has no `model` of its own under it).
_SAVED_TO_OFFICIAL = {"language_model.model.model.": "language_model.model."}

OFFICIAL_PREFIXES = tuple(official for official, _, _ in _TABLE)
# Any other naming -> official; official -> original.
_TO_OFFICIAL = {
    **{hf: official for official, hf, _ in _TABLE},
    **{original: official for official, _, original in _TABLE},
    **{_LLAVA_PREFIX + original: official for official, _, original in _TABLE},
}
_TO_ORIGINAL = {official: original for official, _, original in _TABLE}


def _check_unambiguous(renames: dict[str, str]) -> None:
    """At most one prefix of a map matches any name, and no result is renamed again: the
    order of the prefixes never matters (WeightsMapper applies every one that matches)."""
    for old in renames:
        for other, new in renames.items():
            assert other == old or not other.startswith(old), (other, old)
            assert not new.startswith(old), (new, old)


_check_unambiguous(_TO_OFFICIAL)
_check_unambiguous(_TO_ORIGINAL)
_check_unambiguous(_SAVED_TO_OFFICIAL)


def _rename(name: str, renames: dict[str, str]) -> str | None:
    for old, new in renames.items():
        if name.startswith(old):
            return new + name[len(old) :]
    return None


def official_name(key: str) -> str | None:
    """A weight's name in the official HF files, from any of the namings above (PEFT's
    prefix included), or None when it belongs to no part of AF3."""
    name = key.removeprefix(PEFT_PREFIX)
    if (saved := _rename(name, _SAVED_TO_OFFICIAL)) is not None:
        return saved
    if name.startswith(OFFICIAL_PREFIXES):
        return name
    return _rename(name, _TO_OFFICIAL)


def original_name(key: str) -> str | None:
    """A weight's name in the original layout, its component folder first (`llm.model.*`,
    `sound_tower.*`, `sound_mm_projector.layers.0.*`), from any naming; None as above."""
    official = official_name(key)
    return None if official is None else _rename(official, _TO_ORIGINAL)
