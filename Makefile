# medxfer: `make study` runs the default study end to end; `make test` runs the tests.
# Both create .venv and install medxfer (with torch 2.14.1 / torchvision 0.29.1) when missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.medxfer-installed
HOST   ?= 127.0.0.1
PORT   ?= 5000

.PHONY: install study test test-slow ui bench bench-extract bench-rank bench-ground-truth evidence clean-outputs

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

study: $(STAMP)
	$(VENV)/bin/medxfer-study

test: $(STAMP)
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

ui: $(STAMP)
	@mkdir -p mlruns
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db \
		--host $(HOST) --port $(PORT)

bench: $(STAMP)
	$(PY) benchmarks/scores.py

bench-extract: $(STAMP)
	$(PY) benchmarks/extract.py

bench-rank: $(STAMP)
	$(PY) benchmarks/rank.py

bench-ground-truth: $(STAMP)
	$(PY) benchmarks/ground_truth.py

# the evidence medxfer-rank ships, regenerated from the default study's newest analysis run in ./mlruns
evidence: $(STAMP)
	$(PY) -m medxfer.cli.evidence

clean-outputs:
	rm -rf outputs .cache/medxfer
