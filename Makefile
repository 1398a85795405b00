# The README's commands. `make demo` and `make test` build the environment when it is missing.
PY := .venv/bin/python
ONLY ?=
export HF_HUB_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: env demo test test-fast bench lint clean

env:
	@bash tools/make_env.sh

demo: env
	$(PY) tools/demo.py $(if $(ONLY),--only $(ONLY),)

test: env
	$(PY) -m pytest -q tests

# the same without the end-to-end tests marked slow (about two minutes)
test-fast: env
	$(PY) -m pytest -q -m "not slow" tests

bench: env
	$(PY) tools/bench.py $(if $(ONLY),--only $(ONLY),)

LINT_PATHS := d2ext monai_bundles sslseg tools tests datasets benchmarks
lint: env
	$(PY) -m black --check $(LINT_PATHS)
	$(PY) -m isort --check-only $(LINT_PATHS)
	$(PY) -m flake8 $(LINT_PATHS)

clean:
	rm -rf .venv work results output
