# labelprop: every target bootstraps its own virtual environment in .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	@echo "==> creating $(VENV) and installing labelprop (first run only, about a minute)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@

demo: $(STAMP)
	$(BIN)/labelprop demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/simulate_scale.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
