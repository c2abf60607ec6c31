# lgsid: two commands do all the set-up.
#   make demo   materialize the whole pipeline on the embedded demo world
#   make test   run the test suite
HOME_DIR ?= $(CURDIR)/.lgsid
export DAGSTER_HOME := $(HOME_DIR)/dagster
export LGSID_HOME := $(HOME_DIR)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
PY := .venv/bin/python

.PHONY: setup runtime demo test ui report validate bench clean

setup:
	@bash scripts/setup.sh

# the runtime only (no test extras): what demo, ui, report and validate need
runtime:
	@LGSID_EXTRAS= bash scripts/setup.sh

demo: runtime
	.venv/bin/lgsid materialize --home $(HOME_DIR)
	@echo ""
	@echo "Done. Open the Dagster UI on these materializations with:  make ui"
	@echo "   then browse http://127.0.0.1:3000 (DAGSTER_HOME=$(DAGSTER_HOME))"

test: setup
	$(PY) -m pytest tests

ui: runtime
	@mkdir -p $(DAGSTER_HOME)
	@test -f $(DAGSTER_HOME)/dagster.yaml || cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	exec .venv/bin/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml

report: runtime
	.venv/bin/lgsid report --home $(HOME_DIR)

validate: runtime
	.venv/bin/dagster definitions validate -w workspace.yaml

clean:
	rm -rf $(HOME_DIR)
