"""Run vLLM's built-in AF3 on a checkpoint; print greedy tokens as JSON (last line).

Usage: builtin_vllm_oracle.py CHECKPOINT PROMPT AUDIOS.npz MAX_TOKENS
"""

import json
import sys

import numpy as np


def main() -> None:
    from vllm import LLM, SamplingParams

    from af3_model_executor.constants import SAMPLE_RATE
    from af3_model_executor.inspection import model_class_name
    from af3_serve.engine import offline_engine_kwargs

    checkpoint, prompt, audio_file, max_tokens = sys.argv[1:5]
    audios = list(np.load(audio_file).values())
    # The sizes af3-serve would use, without our model (hf_overrides names no architecture).
    kwargs = offline_engine_kwargs(checkpoint, dtype="float32", hf_overrides={})
    llm = LLM(**kwargs | {"max_num_batched_tokens": kwargs["max_model_len"]})
    requests = [
        {"prompt": prompt, "multi_modal_data": {"audio": [(a, SAMPLE_RATE)]}} for a in audios
    ]
    outputs = llm.generate(requests, SamplingParams(max_tokens=int(max_tokens), temperature=0))
    model_class = llm.apply_model(model_class_name)[0]
    print(
        "ORACLE "
        + json.dumps(
            {"tokens": [list(o.outputs[0].token_ids) for o in outputs], "model_class": model_class}
        )
    )


if __name__ == "__main__":
    main()
