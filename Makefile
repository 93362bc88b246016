# labelprop: every target bootstraps its own virtual environment in .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
PIPC    = -c scripts/constraints-detect.txt

.PHONY: demo test bench clean

# One stamp: labelprop with its test and detection extras (torch, torchvision pinned
# together), then detectron2 repacked as pure Python (scripts/install_detectron2.py).
$(STAMP): pyproject.toml scripts/constraints-detect.txt scripts/install_detectron2.py
	@echo "==> creating $(VENV) and installing labelprop with torch and detectron2 (first run only: a few minutes, about 6 GB)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,detect]' $(PIPC)
	$(BIN)/python scripts/install_detectron2.py
	@touch $@

demo: $(STAMP)
	$(BIN)/labelprop demo --detect

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=20

bench: $(STAMP)
	$(BIN)/python bench/simulate_scale.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
