# make test: creates .venv if missing, installs the project with the extras the tests cover
#            (tools: rich and matplotlib; bench: psutil; test: pytest and friends) under the pins
#            in constraints.txt, and runs pytest.
# make demo: the export on the built-in demo data and model (see README).
# make bench: the benchmark harness (benchmarks/README.md).
# make engines: fetch/build Prism and Hadoop's MiniDFSCluster into ~/.cache/embedding-export for the
#               engine tests (tests/engines; without them those tests are skipped, in CI they fail).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test demo bench engines clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) setup.py constraints.txt
	$(PY) -m pip install -q --upgrade "pip>=24" "setuptools>=70" wheel
	$(PY) -m pip install -q -c constraints.txt -e ".[tools,bench,test,hdfs]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/embedding-export demo

engines: $(STAMP)
	PYTHON=$(PY) .ci/engines/fetch.sh

bench: $(STAMP)
	$(PY) benchmarks/run.py --rows 200000 --naive-rows 100000 --json bench_out/bench.json

clean:
	rm -rf $(VENV) build dist *.egg-info demo bench_out
