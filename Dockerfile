# af3-serve for NVIDIA GPUs, on vLLM's official image: CUDA, torch and vllm==0.32.0 are
# already there, so installing `.[gpu]` only adds our package and its pure-Python deps.
#   docker build -t af3-serve .
#   docker run --gpus all --ipc=host -p 8000:8000 -v hf-cache:/data/hf \
#     -e HF_TOKEN -e AF3_API_KEY af3-serve
# The laptop variant (CPU, tiny random-weight checkpoint) is Dockerfile.cpu.
FROM vllm/vllm-openai:v0.32.0

# vLLM lives in the image's system Python, installed there with uv; vLLM's docs extend the
# image the same way. --break-system-packages: should that Python come from the distribution
# (as on Ubuntu 24.04), its PEP 668 marker would refuse the install.
WORKDIR /opt/af3-serve
COPY pyproject.toml README.md LICENSE ./
COPY af3_serve af3_serve
COPY model_executor model_executor
COPY benchmarks/af3_bench benchmarks/af3_bench
RUN uv pip install --system --break-system-packages --no-cache ".[gpu]" \
    && python3 -c "import af3_serve.cli, af3_model_executor"

# A fixed high UID: no clash with a base image's own users (Ubuntu 24.04 has 1000).
# HF_HOME is the model download cache: mount a volume there, or every start downloads
# the multi-GB checkpoint again. vLLM and Triton keep their compile caches under $HOME.
ENV HF_HOME=/data/hf
RUN useradd --create-home --uid 10001 --user-group af3 \
    && mkdir -p /data/hf \
    && chown af3:af3 /data/hf
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /home/af3
VOLUME ["/data/hf"]

EXPOSE 8000
# /health is 200 once the engine is up and 503 after it died. Loading a 7B model (plus a
# first download) takes minutes: failures during the start period do not count.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30m --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=5)"]
ENTRYPOINT ["af3-serve"]
# The base image's arguments are for `vllm serve`; ours default to the real model on port 8000.
CMD []
