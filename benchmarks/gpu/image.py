"""What the lent H200 machine's image already holds, and what the carry set leaves out.

The package names are the device tool's KINDS.md list ("Python packages already there",
read on the machine on 2026-11-17); the versions are those KINDS.md's pip list gives. The
carry builder carries a requirement only when its distribution is not in this list and not
excluded below; the device script checks the listed versions against what the carried
packages ask for (`assumed_on_image` in the manifest).
"""

import re

# Python of the image: /opt/torch/.venv/bin/python3 is Python 3.12.3 (KINDS.md).
PYTHON_VERSION = "3.12"
PYTHON_FULL_VERSION = "3.12.3"

IMAGE_PACKAGES = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython
diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl
meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti
nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile
nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime
onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich
sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn
sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq
torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray
xxhash yarl zipp
""".split()

# Versions KINDS.md's pip list gives (the rest are known by name only).
IMAGE_VERSIONS = {
    "accelerate": "1.15.0",
    "huggingface-hub": "1.33.0",
    "numpy": "2.5.2",
    "onnx": "1.23.1",
    "onnxruntime": "1.30.0",
    "safetensors": "0.8.0",
    "sentencepiece": "0.2.2",
    "tiktoken": "0.14.0",
    "tokenizers": "0.23.2",
    "torch": "2.11.0",
    "torchaudio": "2.11.0",
    "torchvision": "0.26.0",
    "transformers": "5.17.0",
    "triton": "3.6.0",
}

# Import names of image distributions whose import name is not their distribution name
# (the rest import as the name with '-' turned into '_'); used by the import-closure check.
IMAGE_IMPORT_NAMES = {
    "absl-py": ["absl"],
    "attrs": ["attr", "attrs"],
    "cuda-bindings": ["cuda"],
    "cuda-core": ["cuda"],
    "cuda-pathfinder": ["cuda"],
    "cupy-cuda13x": ["cupy", "cupyx", "cupy_backends"],
    "cython": ["Cython", "cython", "pyximport"],
    "hf-xet": ["hf_xet"],
    "jax-cuda13-pjrt": ["jax_plugins"],
    "jax-cuda13-plugin": ["jax_cuda13_plugin"],
    "lazy-loader": ["lazy_loader"],
    "markdown-it-py": ["markdown_it"],
    "nvidia-ml-py": ["pynvml"],
    "nvidia-nvtx": ["nvtx"],
    "opencv-python-headless": ["cv2"],
    "opt-einsum": ["opt_einsum"],
    "pillow": ["PIL"],
    "protobuf": ["google"],
    "py-cpuinfo": ["cpuinfo"],
    "pyproject-hooks": ["pyproject_hooks"],
    "pytest": ["pytest", "_pytest", "py"],
    "python-dateutil": ["dateutil"],
    "pytorch-lightning": ["pytorch_lightning"],
    "pyyaml": ["yaml", "_yaml"],
    "scikit-build-core": ["scikit_build_core"],
    "scikit-image": ["skimage"],
    "scikit-learn": ["sklearn"],
    "sentence-transformers": ["sentence_transformers"],
    "setuptools": ["setuptools", "pkg_resources", "_distutils_hack", "distutils"],
    "tensorboard-data-server": ["tensorboard_data_server"],
    "torch": ["torch", "functorch", "torchgen"],
    "torch-geometric": ["torch_geometric"],
    "typing-extensions": ["typing_extensions"],
    "wadler-lindig": ["wadler_lindig"],
}

# Required by vLLM 0.32.0's metadata (or pulled in by what is), deliberately not carried.
# The import-closure check proves each is imported lazily or under a guard on the paths
# these servers take; `vllm serve` on an H200 with FlashAttention 3 does not need them.
TORCH_ABI_NOTE = (
    "vLLM 0.32.0 pins torch==2.13.0, but its compiled CUDA extensions "
    "(_C_stable_libtorch.abi3.so, _moe_C_stable_libtorch.abi3.so, "
    "vllm_flash_attn/_vllm_fa3_C.abi3.so, cumem_allocator.abi3.so) link only against "
    "PyTorch's stable C ABI (aoti_torch_*), whose symbols torch 2.11.0's libtorch_cpu.so and "
    "libtorch_cuda.so export (checked with nm -D against the torch 2.11.0 manylinux wheel, "
    "issue 14); so the image's torch 2.11.0+cu130 is used and torch (527 MB) is not carried. "
    "The device script proves it by loading those extensions before anything else."
)
EXCLUDED = {
    "torch": TORCH_ABI_NOTE,
    "torchvision": "the image's 0.26.0 matches its torch 2.11; vLLM's pin (0.28.0) is for 2.13",
    "torchaudio": "the image's 2.11.0 is the version vLLM pins",
    "torchcodec": "built per torch release (vLLM's for 2.13); only vLLM's video/audio "
    "media loaders import it, lazily; af3-serve decodes audio with libsndfile",
    "flashinfer-python": "optional kernels (FlashInfer attention/sampling/MoE), looked up "
    "with importlib at run time; FlashAttention 3 serves Hopper; ~600 MB with its cubins",
    "flashinfer-cubin": "FlashInfer's kernels, see flashinfer-python",
    "flashinfer-jit-cache": "FlashInfer's kernels, see flashinfer-python",
    "tilelang": "optional kernels (sparse/MLA attention), imported lazily",
    "nvidia-cutlass-dsl": "CuTe DSL kernels (Blackwell FA4, quack), imported lazily",
    "nvidia-cutlass-dsl-libs-base": "see nvidia-cutlass-dsl",
    "nvidia-cutlass-dsl-libs-cu13": "see nvidia-cutlass-dsl",
    "quack-kernels": "CuTe DSL kernels (Blackwell), imported lazily",
    "tokenspeed-mla": "MLA attention kernels (DeepSeek-style models), imported lazily",
    "humming-kernels": "MoE/quantized GEMM kernels for other models, imported lazily",
    "pynvvideocodec": "NVIDIA video decoding for video inputs, imported lazily",
    "fastsafetensors": "an alternative weight loader (--load-format fastsafetensors)",
    "instanttensor": "an alternative weight loader (--load-format instanttensor)",
    "nvidia-cudnn-frontend": "cuDNN graph API for FlashInfer/other backends, imported lazily",
    "nvidia-cuda-runtime-cu13": "CUDA runtime: the image's CUDA 13.0 (torch 2.11.0+cu130)",
}

# Files of the vllm wheel an H200 does not use (verified to exist in the wheel before they
# are removed; the manifest lists each with its size).
STRIP_FROM_VLLM = [
    "vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so",  # FlashAttention 2: Hopper runs FA3
    "vllm/_flashmla_C*",  # FlashMLA: DeepSeek MLA models
    "vllm/_flashkda_C*",  # Kimi delta attention
    "vllm/_deepselect_C*",  # DeepSeek sparse-attention top-k
    "vllm/third_party/deep_gemm",  # DeepGEMM: block-fp8 GEMMs of DeepSeek-style models
    "vllm/third_party/fmha_sm100",  # Blackwell (sm100) attention
    "vllm/vllm-rs",  # the opt-in Rust frontend (VLLM_USE_RUST_FRONTEND=1 only)
    # Fused-MoE kernels: Qwen2.5-7B is dense, and vLLM imports this extension under
    # contextlib.suppress(ImportError) (platforms/cuda.py import_kernels). 36 MiB of the
    # archive (its fatbins barely compress): without it the set is two parts, not three.
    # `carry --keep-moe` keeps it.
    "vllm/_moe_C_stable_libtorch*",
]


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def import_names(distribution: str) -> list[str]:
    name = canonical(distribution)
    return IMAGE_IMPORT_NAMES.get(name, [name.replace("-", "_")])


def marker_environment(extra: str = "") -> dict[str, str]:
    """PEP 508 marker values of the image's interpreter."""
    return {
        "python_version": PYTHON_VERSION,
        "python_full_version": PYTHON_FULL_VERSION,
        "implementation_version": PYTHON_FULL_VERSION,
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "platform_machine": "x86_64",
        "platform_system": "Linux",
        "sys_platform": "linux",
        "os_name": "posix",
        "platform_release": "",
        "platform_version": "",
        "extra": extra,
    }
