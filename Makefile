# The lock is uv.lock; requirements.lock is its export for pip. Set-up installs exactly those versions
# (hash-checked), then the project itself without dependencies: every machine gets the tested versions.
# `make lock` refreshes both.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
LOCK   := requirements.lock
STAMP  := $(VENV)/.installed
UV_VERSION := 0.13.8

.PHONY: venv test lint format train lock clean

$(STAMP): $(LOCK) uv.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { \
	  echo "error: could not create $(VENV) with $(PYTHON); install Python >= 3.10 with venv (Debian: apt-get install python3-venv)"; exit 1; }
	@$(PY) -m pip install -q --disable-pip-version-check --no-deps --require-hashes -r $(LOCK) || { \
	  echo "error: installing $(LOCK) failed (see pip's message above); run 'make clean' and try again, or 'make lock' after changing pyproject.toml"; exit 1; }
	@$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . || { \
	  echo "error: installing the project into $(VENV) failed (see pip's message above)"; exit 1; }
	@touch $(STAMP)
	@echo "set-up done: run the command as $(VENV)/bin/dcls-audio (or 'source $(VENV)/bin/activate')"

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

train: $(STAMP)
	$(VENV)/bin/dcls-audio train

# Re-resolve uv.lock (the lock) from pyproject.toml and export it as requirements.lock (what pip
# installs above, hash-checked); needs the network. A pinned uv is installed into .uv/. The export
# holds the test extra and the plot extra (matplotlib: the pictures of eval, infer and training).
lock:
	test -x .uv/bin/uv || { $(PYTHON) -m venv .uv && .uv/bin/pip install -q uv==$(UV_VERSION); }
	UV_PYTHON_DOWNLOADS=never .uv/bin/uv lock -p $(PYTHON)
	UV_PYTHON_DOWNLOADS=never .uv/bin/uv export --frozen --no-emit-project --extra test --extra plot --group build \
	  --format requirements-txt --no-header -o $(LOCK)

clean:
	rm -rf $(VENV) .uv build *.egg-info
