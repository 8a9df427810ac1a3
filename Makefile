# Two entry points on a fresh machine: `make train` (the main job) and `make test`.
# Both create .venv and install what is missing first.
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: train test lint bench

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first, pinned, so the range in pyproject cannot pull a CUDA build.
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev,sweep]"
	touch $(STAMP)

train: $(STAMP)
	$(PY) -m cortexnet.train $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

lint: $(STAMP)
	.venv/bin/ruff check .

# The speed and memory suite at its default sizes (about 10 minutes on 2 CPU cores).
bench: $(STAMP)
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/recurrent_vs_feedforward.py
	$(PY) benchmarks/memory.py
	$(PY) benchmarks/ode.py
