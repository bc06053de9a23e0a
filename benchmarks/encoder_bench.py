"""Encoder micro-benchmark: our AF3 audio path against vLLM's built-in one.

Both models are loaded in this one process from the same checkpoint, in the same
dtype, on the same device, and fed the same clips. With `--family musicflamingo` (or
`af-next`: the same encoder), the checkpoint is of that family and the reference is
transformers' MusicFlamingoForConditionalGeneration (vLLM 0.32 has no MusicFlamingo):
its `get_audio_features` (encoder, rotary time embeddings, adaptor) against ours. Two
timings per clip (`--timings` picks):

- `encoder`: log-mel features -> audio embeddings (encoder + adaptor), what each
  model does in `embed_multimodal`; upstream gets HF's padded features and mask.
- `audio_path`: 16 kHz PCM -> audio embeddings, feature extraction included (ours:
  the log-mel on the model's device; upstream: HF's feature extractor, which vLLM
  runs in its API process).

Reported as audio seconds per second (higher is better) and our/upstream ratios. The
clips are real speech; each timing is the fastest of --repeats runs after --warmup
untimed ones. `max_abs_diff` compares the last timed outputs (audio path if timed).

    python -m benchmarks.encoder_bench --presets tiny --repeats 5 --out results.json
    python -m benchmarks.encoder_bench --family musicflamingo --presets real-encoder \
        --seconds 1200 --long-seconds --timings encoder --out results.json
"""

import argparse
import platform
from pathlib import Path

import numpy as np
import torch

from benchmarks import harness


def load_model(checkpoint: Path, dtype: str, ours: bool = True) -> tuple:
    """The whole model (ours, or vLLM's built-in), built and loaded as a vLLM worker does
    (minus the accelerator cache flush, which fails outside a worker on CPU), and its
    config."""
    from vllm.config import set_current_vllm_config
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.model_loader import get_model_loader
    from vllm.model_executor.model_loader.utils import process_weights_after_loading
    from vllm.utils.torch_utils import set_default_torch_dtype

    from af3_serve.engine import offline_engine_kwargs

    builtin = {} if ours else {"hf_overrides": {}}
    args = EngineArgs(**offline_engine_kwargs(checkpoint, dtype=dtype, **builtin))
    vllm_config = args.create_engine_config()
    model_config = vllm_config.model_config
    loader = get_model_loader(vllm_config.load_config)
    with set_current_vllm_config(vllm_config), set_default_torch_dtype(model_config.dtype):
        model = loader.create_model(vllm_config=vllm_config, model_config=model_config)
        loader.load_weights(model, model_config)
        process_weights_after_loading(model, model_config, torch.device("cpu"))
    return model.eval(), vllm_config


def init_single_process_vllm() -> None:
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel

    port = harness.free_port()
    with set_current_vllm_config(VllmConfig()):
        init_distributed_environment(
            world_size=1,
            rank=0,
            local_rank=0,
            distributed_init_method=f"tcp://127.0.0.1:{port}",
            backend="gloo",
        )
        initialize_model_parallel(1, 1)


class HFMusicFlamingo:
    """transformers' MusicFlamingo audio path, with `embed_multimodal`'s signature."""

    def __init__(self, checkpoint: Path, torch_dtype: torch.dtype) -> None:
        from transformers import MusicFlamingoForConditionalGeneration

        model_class = MusicFlamingoForConditionalGeneration
        self.model = model_class.from_pretrained(checkpoint, dtype=torch_dtype).eval()

    def embed_multimodal(self, **features: torch.Tensor) -> torch.Tensor:
        # Its rotary time embeddings take each window's time from the placeholders.
        return self.model.get_audio_features(**features).pooler_output


def flat(embeddings: object) -> torch.Tensor:
    """[tokens, hidden] from one tensor or a sequence of per-audio tensors."""
    if isinstance(embeddings, torch.Tensor):
        return embeddings.reshape(-1, embeddings.shape[-1])
    return torch.cat([flat(e) for e in embeddings])


@torch.inference_mode()
def run(
    checkpoint: Path,
    seconds_list: list[float],
    dtype: str,
    repeats: int,
    warmup: int = 1,
    measured: tuple[str, ...] = ("encoder", "audio_path"),
) -> list[dict]:
    from transformers import AutoProcessor
    from vllm.config import set_current_vllm_config

    ours, vllm_config = load_model(checkpoint, dtype)
    torch_dtype = ours.audio_tower.conv1.weight.dtype
    rotary_time = getattr(ours, "rotary_time", None)
    if rotary_time is None:
        upstream, _ = load_model(checkpoint, dtype, ours=False)
    else:
        upstream = HFMusicFlamingo(checkpoint, torch_dtype)
    hf_processor = AutoProcessor.from_pretrained(checkpoint)

    def upstream_features(clip: np.ndarray) -> dict:
        inputs = hf_processor(text=["<sound>"], audio=[clip], return_tensors="pt")
        if rotary_time is not None:
            return {
                "input_features": inputs["input_features"].to(torch_dtype),
                "input_features_mask": inputs["input_features_mask"],
                "input_ids": inputs["input_ids"],
            }
        windows = inputs["input_features"].shape[0]
        return {
            "input_features": inputs["input_features"].to(torch_dtype),
            "feature_attention_mask": inputs["input_features_mask"],
            "chunk_counts": torch.tensor([windows]),
        }

    sample = harness.speech_sample()
    rows = []
    with set_current_vllm_config(vllm_config):
        for i, seconds in enumerate(seconds_list):
            clip = harness.speech_clip(seconds, i, sample)
            pcm = torch.from_numpy(clip)
            windows, frame_counts = ours.log_mel.split_windows([pcm])
            mel = ours.log_mel(windows)
            features = upstream_features(clip)

            def ours_encoder(
                mel: torch.Tensor = mel,
                counts: list[int] = frame_counts,
                samples: int = pcm.numel(),
            ) -> object:
                tokens = ours.audio_tower(mel, counts)
                if rotary_time is not None:
                    frames = ours.audio_spec.window_frame_counts(samples)
                    tokens = rotary_time(tokens, [frames])
                return ours.multi_modal_projector(tokens)

            def ours_audio_path(pcm: torch.Tensor = pcm) -> object:
                return ours.embed_multimodal(audio_pcm=[pcm])

            def upstream_encoder(features: dict = features) -> object:
                return upstream.embed_multimodal(**features)

            def upstream_audio_path(clip: np.ndarray = clip) -> object:
                return upstream.embed_multimodal(**upstream_features(clip))

            runs = {
                "ours_encoder": ours_encoder,
                "upstream_encoder": upstream_encoder,
                "ours_audio_path": ours_audio_path,
                "upstream_audio_path": upstream_audio_path,
            }
            outputs = {}

            def kept(key: str, runs: dict = runs, outputs: dict = outputs) -> object:
                def call() -> None:
                    outputs[key] = runs[key]()

                return call

            timings = {
                f"{who}_{name}_s": harness.time_it(
                    kept(f"{who}_{name}"), repeats, stat="min", warmup=warmup
                )
                for name in measured
                for who in ("ours", "upstream")
            }
            last = measured[-1]
            gap = (flat(outputs[f"ours_{last}"]) - flat(outputs[f"upstream_{last}"])).abs().max()
            row = {"audio_seconds": seconds, "max_abs_diff": float(gap), **timings}
            for name in measured:
                ours_rtf = seconds / timings[f"ours_{name}_s"]
                upstream_rtf = seconds / timings[f"upstream_{name}_s"]
                row[f"ours_{name}_audio_s_per_s"] = round(ours_rtf, 2)
                row[f"upstream_{name}_audio_s_per_s"] = round(upstream_rtf, 2)
                row[f"{name}_speedup"] = round(ours_rtf / upstream_rtf, 3)
            rows.append(row)
            speedups = "  ".join(f"{name} x{row[f'{name}_speedup']:.2f}" for name in measured)
            print(f"{seconds:7.1f} s  {speedups}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "real-encoder"])
    parser.add_argument("--seconds", nargs="+", type=float, default=[7.3, 30.0, 45.0, 61.0])
    parser.add_argument(
        "--long-seconds",
        nargs="*",
        type=float,
        default=[600.0],
        help="extra clip lengths for the tiny preset only",
    )
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before each timing")
    parser.add_argument(
        "--family",
        choices=["af3", "musicflamingo", "af-next"],
        default="af3",
        help="checkpoint family; musicflamingo and af-next are compared with transformers'",
    )
    parser.add_argument(
        "--timings", nargs="+", choices=["encoder", "audio_path"], default=["encoder", "audio_path"]
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--checkpoints", type=Path, default=harness.CHECKPOINTS)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    init_single_process_vllm()
    results = {
        "command": "python -m benchmarks.encoder_bench "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if k != "checkpoints"
        ),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "torch_threads": args.threads,
            "device": "cpu",
            "torch": torch.__version__,
            "load_average_at_start": open("/proc/loadavg").read().strip(),
        },
        "reference": "vLLM's built-in AF3"
        if args.family == "af3"
        else "transformers' MusicFlamingoForConditionalGeneration.get_audio_features",
        "presets": {},
    }
    for preset in args.presets:
        checkpoint = harness.bench_checkpoint(preset, args.checkpoints, args.family)
        seconds = args.seconds + (args.long_seconds if preset == "tiny" else [])
        print(f"== preset {preset}", flush=True)
        results["presets"][preset] = run(
            checkpoint, seconds, args.dtype, args.repeats, args.warmup, tuple(args.timings)
        )
    results["machine"]["load_average_at_end"] = open("/proc/loadavg").read().strip()
    harness.write_result(args.out, results)


if __name__ == "__main__":
    main()
