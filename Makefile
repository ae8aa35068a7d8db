# Two commands do all the set-up: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/hybridhash demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_model.py
	$(BIN)/python benchmarks/bench_metrics.py
	$(BIN)/python benchmarks/bench_graded_metrics.py
	$(BIN)/python benchmarks/bench_search.py
	$(BIN)/python benchmarks/bench_encode.py
	$(BIN)/python benchmarks/bench_living.py
	$(BIN)/python benchmarks/bench_service.py
	$(BIN)/python benchmarks/bench_export.py
	$(BIN)/python benchmarks/bench_encode_model.py
	# the original HybridHash code, fetched by you: make bench ORIGINAL=/path/to/HybridHash
	$(BIN)/python benchmarks/bench_train_step.py $(if $(ORIGINAL),--original $(ORIGINAL))
	$(BIN)/python benchmarks/bench_gpu.py $(if $(ORIGINAL),--original $(ORIGINAL))
	# bf16 against fp32 training on digits, 2 seeds: about 25 minutes where bf16 is emulated
	$(BIN)/python benchmarks/bench_bf16_train.py
	# every runtime x precision by batch, with bit agreement and mAP, on two digits checkpoints it trains once
	$(BIN)/python benchmarks/bench_precision.py

clean:
	rm -rf $(VENV) runs .pytest_cache
