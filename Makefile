# Two commands do all set-up on a fresh machine:  make demo  |  make test
VENV    ?= .venv
PY      := $(VENV)/bin/python
HASH    := $(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
STAMP   := $(VENV)/.installed-$(HASH)
STAGE   ?= evaluation

.PHONY: install demo test ui bench clean differential

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch pinned to the local CPU build: without the constraint pip pulls a multi-GB CUDA build
	$(PY) -m pip install -q -c constraints.txt "torch==2.13.0"
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	# compile the text kernels once (numba's cache in __pycache__): about a minute, paid here and not by the first run
	$(PY) -c "from metarater_assets.core import textkernels; textkernels.warm()"
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

demo: install
	$(VENV)/bin/metarater run --stage $(STAGE)
	$(VENV)/bin/metarater report
	$(VENV)/bin/metarater report --json

# the suite's scratch (homes, Dagster instances, models) on tmpfs where there is one
TEST_TMP := $(if $(wildcard /dev/shm),/dev/shm/metarater-tests-$(shell id -u),)
# two pytest workers, a test file each at a time (much of the suite waits on servers and daemons),
# the longest files first; measured in a fresh clone with CI=true on 2 cores: pytest 800 s (553 tests,
# commit defcc69), 815 s (562 tests, 6f0a917), 849 s (561 tests, 0268cfe, a slower hour) and 756 s (563 tests,
# 5048354), 2026-12-07; on a later machine (AMD EPYC, 2 cores) 615 s (565 tests, 1143e45) and 629 s (566 tests, 8fa5213);
# before the automation sensor launched its own runs, 843-934 s; 3 workers were slower (1026 s against 967 s, 2026-12-06, before the files were
# ordered)
TEST_WORKERS ?= 2

# --no-loadscope-reorder: files in collection order (tests/conftest.py puts the longest first); xdist's
# default order, most tests per file first, left the one-test e2e files (the longest) for the end
test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=20 $(if $(TEST_TMP),--basetemp=$(TEST_TMP)); rc=$$?; $(if $(TEST_TMP),rm -rf $(TEST_TMP);) exit $$rc

# the differential harness: SEQUENCES seeded sequences of edits and kills, each step against a fresh home
SEQUENCES ?= 10
differential: install
	$(PY) tests/harness/differential.py --sequences $(SEQUENCES) --steps 6

ui: install
	$(VENV)/bin/metarater ui

# benchmarks against peers (installed by bench/setup_peers.sh into bench/.peers, never into .venv)
bench: install
	bash bench/setup_peers.sh
	$(PY) bench/run.py
	$(PY) bench/text_path.py
	$(PY) bench/control.py
	$(PY) bench/scale.py
	$(PY) bench/shard_memory.py
	$(PY) bench/ray_engine.py
	$(PY) bench/controlled.py

clean:
	rm -rf .metarater
