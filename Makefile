# Two commands set up a fresh machine and do the work (see README):
#   make demo   install into .venv and run the main job on its embedded data
#   make test   install into .venv and run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install docs clean

# The example plugin package (examples/imf) is installed like any third party's: with pip, as a
# copy, found through its entry point; its tests are part of the suite.
EXAMPLE := examples/imf
EXAMPLE_FILES := $(EXAMPLE)/pyproject.toml $(wildcard $(EXAMPLE)/src/*/*.py)

# Re-install when the package's declared dependencies (or the example package) change.
$(STAMP): pyproject.toml setup.py $(EXAMPLE_FILES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	rm -rf $(EXAMPLE)/build  # pip builds in place; a module deleted from src/ would linger there
	$(BIN)/python -m pip install --quiet --no-deps --force-reinstall ./$(EXAMPLE)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/toolkit run configs/meanflow_digits.yaml --backend torch --overwrite
	$(BIN)/toolkit run configs/meanflow_digits.yaml --backend jax --overwrite

# One pytest-xdist worker per core (tests/conftest.py gives each worker its share of the threads),
# a test file at a time per worker: a file's tests share their configs, so their compiled programs.
test: $(STAMP)
	$(BIN)/python -m pytest -n auto --dist loadfile

# The API reference from the docstrings (docs/api/index.html); the test suite builds it too.
docs: $(STAMP)
	$(BIN)/python docs/build_api_reference.py docs/api

clean:
	rm -rf $(VENV) runs build *.egg-info
