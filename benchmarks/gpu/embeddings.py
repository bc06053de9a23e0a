"""Audio embeddings (encoder + adaptor) of our vLLM model against transformers'
AudioFlamingo3ForConditionalGeneration, same checkpoint, same device, one process.

transformers runs twice: in the serving dtype (bf16 on the GPU) and in float32 on the same
weights upcast, the reference. Our model runs in the serving dtype, loaded the way a vLLM
worker loads it. The tolerance is set by transformers itself: our error against the
float32 reference may be at most twice transformers' own error in the same dtype, or 1e-2
(bf16 operands give 1e-3 to 1e-2 relative error) if that is larger; in float32, 1e-4.

    python -m benchmarks.gpu.embeddings CHECKPOINT --device cuda --dtype bfloat16 \
        --seconds 3.3 47.5 600 --out embeddings.json
"""

import argparse
import gc
import json
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.gpu import clips


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    value, reference = value.double(), reference.double()
    return float((value - reference).norm() / reference.norm().clamp_min(1e-30))


@torch.inference_mode()
def transformers_embeddings(
    checkpoint: Path, audios: list[np.ndarray], device: str, dtype: torch.dtype
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """transformers' embeddings in `dtype`, then in float32 (weights upcast)."""
    from transformers import AudioFlamingo3ForConditionalGeneration, AutoProcessor

    from af3_model_executor.constants import AUDIO_TOKEN

    processor = AutoProcessor.from_pretrained(checkpoint)
    placement = {} if device == "cpu" else {"device_map": device}  # straight to the GPU
    model = AudioFlamingo3ForConditionalGeneration.from_pretrained(
        checkpoint, dtype=dtype, **placement
    )
    model = model.to(device).eval()

    def run(feature_dtype: torch.dtype) -> list[torch.Tensor]:
        out = []
        for audio in audios:
            inputs = processor(text=[AUDIO_TOKEN], audio=[audio], return_tensors="pt")
            features = inputs["input_features"].to(device, feature_dtype)
            mask = inputs["input_features_mask"].to(device)
            out.append(model.get_audio_features(features, mask).pooler_output.float().cpu())
        return out

    served = run(dtype)
    model.model.audio_tower.float()
    model.model.multi_modal_projector.float()
    reference = run(torch.float32)
    model = None
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return served, reference


def ours_embeddings(checkpoint: Path, audios: list[np.ndarray], device: str, dtype: str) -> list:
    """Our model in this process, built and loaded as a vLLM worker does."""
    from vllm.config import set_current_vllm_config

    from af3_model_executor.inspection import audio_embeddings
    from af3_serve.engine import offline_engine_kwargs
    from benchmarks.encoder_bench import init_single_process_vllm, load_model

    init_single_process_vllm()
    if device == "cpu":
        model, vllm_config = load_model(checkpoint, dtype)
    else:
        from vllm.engine.arg_utils import EngineArgs
        from vllm.model_executor.model_loader import get_model_loader

        vllm_config = EngineArgs(
            **offline_engine_kwargs(checkpoint, dtype=dtype)
        ).create_engine_config()
        with set_current_vllm_config(vllm_config):
            loader = get_model_loader(vllm_config.load_config)
            model = loader.load_model(
                vllm_config=vllm_config, model_config=vllm_config.model_config
            )
    with set_current_vllm_config(vllm_config):
        return audio_embeddings(model, audios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--seconds", type=float, nargs="+", default=[3.3, 47.5, 600.0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch_dtype = getattr(torch, args.dtype)
    audios = [clips.clip(s, seed=i) for i, s in enumerate(args.seconds)]

    started = time.monotonic()
    served, reference = transformers_embeddings(args.checkpoint, audios, args.device, torch_dtype)
    hf_s = time.monotonic() - started
    ours = ours_embeddings(args.checkpoint, audios, args.device, args.dtype)
    ours_s = time.monotonic() - started - hf_s

    floor = 1e-4 if torch_dtype == torch.float32 else 1e-2
    rows = []
    for seconds, mine, theirs, ref in zip(args.seconds, ours, served, reference, strict=True):
        row = {"audio_seconds": seconds, "tokens": list(ref.shape)[0], "shape_ok": False}
        if mine.shape == ref.shape == theirs.shape:
            hf_error = relative_error(theirs, ref)
            our_error = relative_error(mine, ref)
            tolerance = max(2 * hf_error, floor)
            row |= {
                "shape_ok": True,
                "ours_vs_fp32_rel": our_error,
                "transformers_vs_fp32_rel": hf_error,
                "ours_vs_transformers_rel": relative_error(mine, theirs),
                "ours_vs_fp32_max_abs": float((mine - ref).abs().max()),
                "reference_rms": float(ref.double().pow(2).mean().sqrt()),
                "tolerance_rel": tolerance,
                "ok": our_error <= tolerance,
            }
        else:
            row |= {"ours_shape": list(mine.shape), "reference_shape": list(ref.shape), "ok": False}
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {
        "checkpoint": str(args.checkpoint),
        "device": args.device,
        "dtype": args.dtype,
        "tolerance_rule": "ours vs float32 transformers <= max(2 x transformers' own error in "
        f"the serving dtype vs its float32, {floor})",
        "transformers_s": round(hf_s, 1),
        "ours_s": round(ours_s, 1),
        "clips": rows,
        "ok": all(r["ok"] for r in rows),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
