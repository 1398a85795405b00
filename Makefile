# The README's commands. `make demo` and `make test` build the environment when it is missing.
PY := .venv/bin/python
ONLY ?=
export HF_HUB_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: env demo test bench lint clean

env:
	@bash tools/make_env.sh

demo: env
	$(PY) tools/demo.py

test: env
	$(PY) -m pytest -q tests

bench: env
	$(PY) tools/bench.py $(if $(ONLY),--only $(ONLY),)

lint: env
	$(PY) -m flake8 d2ext monai_bundles sslseg tools tests datasets benchmarks

clean:
	rm -rf .venv work results output
