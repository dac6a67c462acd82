# The two set-up commands of the README: `make run` (install + main job) and `make test` (install + tests).
PYTHON ?= python3
SHARED ?= ../shared/data
# A fresh run dir each time: a finished run is never overwritten.
RUN ?= runs/tiny-$(shell date +%Y%m%d-%H%M%S)
BENCH_DATA ?= runs/bench-data

.PHONY: install run test bench

# torch is pinned here (not in pyproject) so CPU machines take the local CPU wheel, not a CUDA build.
install:
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -e '.[test]'

run: install
	$(PYTHON) -m pgolf.cli run --recipe tiny \
		--data $(SHARED)/standin/standin_000.jsonl.zst \
		--val-data $(SHARED)/fineweb/val_docs_901.jsonl \
		--tokenizer $(SHARED)/tokenizers/fineweb_1024_bpe.model \
		--out $(RUN)

test: install
	$(PYTHON) -m pytest -q tests

# Training throughput of the tiny recipe on this machine (appends a row to docs/benchmarks.md).
bench: install
	$(PYTHON) benchmarks/make_standin_shards.py --out $(BENCH_DATA) --docs 2000
	$(PYTHON) benchmarks/bench_train.py --recipe tiny --data $(BENCH_DATA) --steps 20
