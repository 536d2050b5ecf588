# Set-up installs exactly the versions in requirements.lock (hash-checked), then the project itself
# without dependencies: every machine gets the tested versions. `make lock` refreshes the lock.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
LOCK   := requirements.lock
STAMP  := $(VENV)/.installed
UV_VERSION := 0.13.8

.PHONY: venv test lint format train lock clean

$(STAMP): $(LOCK) pyproject.toml
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

# Re-resolve the lock from pyproject.toml and requirements/lock-inputs.txt (needs the network).
lock:
	test -x .uv/bin/uv || { $(PYTHON) -m venv .uv && .uv/bin/pip install -q uv==$(UV_VERSION); }
	UV_PYTHON_DOWNLOADS=never .uv/bin/uv pip compile pyproject.toml requirements/lock-inputs.txt --extra test --universal \
	  --python-version 3.10 --generate-hashes --no-header -o $(LOCK)

clean:
	rm -rf $(VENV) .uv build *.egg-info
