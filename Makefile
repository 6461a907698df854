# edgeloop: `make demo` runs the whole loop locally, `make test` runs the test suite.
# Both set up everything they need: a virtualenv in .venv and, as root, Debian packages.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: demo test check bench sysdeps venv clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[agent,server,train,s3,ray,dev]' 2>&1 | grep -v "is ignored: it is neither" || true
	@$(PY) -c "import edge_agent, fleet_server, model_zoo, onnxruntime, fastapi, torch, torchvision, faster_coco_eval, boto3, playwright, moto, ray" || (echo "install failed" && exit 1)
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

venv: $(STAMP)

sysdeps:
	@bash tools/install_sysdeps.sh

demo: sysdeps $(STAMP)
	$(PY) tools/demo.py

# two workers, a test file at a time each (the longest files first: tests/conftest.py)
TEST_WORKERS ?= 2
test: sysdeps $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

check: $(STAMP)
	$(VENV)/bin/ruff check edge_agent fleet_server model_zoo tools tests
	$(VENV)/bin/ruff format --check edge_agent fleet_server model_zoo tools tests
	$(VENV)/bin/mypy edge_agent model_zoo fleet_server

bench: sysdeps $(STAMP)
	$(PY) tools/bench_deploy.py

clean:
	rm -rf $(VENV) .demo bench-results
