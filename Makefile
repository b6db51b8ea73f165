# Two entry points: `make demo` (the main job on bundled data) and `make test`.
# Both create .venv on first use. TORCH is installed first so that the package's
# `torch>=2.2` requirement is already met and pip pulls no CUDA build; override it
# for your platform, e.g. `make test TORCH=torch`.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo_output

.PHONY: demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The demo needs the package alone; the tests need every extra (serve, dicom, tensorboard, ...).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

DEMO_BUDGET ?= 3m
define DEMO_RESULT
import json, sys
summary = json.load(open(sys.argv[1]))
print(f"demo result: mean foreground Dice {summary['foreground_mean']['dice']:.2f} on the "
      f"{summary['num_cases']} held-back cases (anterior and posterior hippocampus)")
endef
export DEMO_RESULT

demo: $(VENV)/.installed
	$(BIN)/autoseg plan autoseg/demo/Dataset004_Hippocampus24 -o $(DEMO_OUT)/Dataset004_Hippocampus24 --preprocess \
		--configs 3d_fullres
	$(BIN)/autoseg train $(DEMO_OUT)/Dataset004_Hippocampus24 --fold 0 --time-budget $(DEMO_BUDGET)
	@echo "training recipe: $(DEMO_OUT)/Dataset004_Hippocampus24/models/3d_fullres/fold_0/recipe.json"
	@echo "progress plot: $(DEMO_OUT)/Dataset004_Hippocampus24/models/3d_fullres/fold_0/progress.png"
	$(BIN)/autoseg export $(DEMO_OUT)/Dataset004_Hippocampus24 -o $(DEMO_OUT)/hippocampus.autoseg \
		--description "autoseg demo: 3 minutes of training on 20 Hippocampus cases"
	$(BIN)/autoseg predict -i autoseg/demo/Dataset004_Hippocampus24/imagesTs -o $(DEMO_OUT)/predictions \
		-m $(DEMO_OUT)/hippocampus.autoseg --preview
	$(BIN)/autoseg evaluate $(DEMO_OUT)/predictions autoseg/demo/Dataset004_Hippocampus24/labelsTs --labels 1 2
	@echo "model package: $(DEMO_OUT)/hippocampus.autoseg (autoseg info $(DEMO_OUT)/hippocampus.autoseg)"
	@echo "per-case reports and previews: $(DEMO_OUT)/predictions/*_report.json, predictions.csv, *_preview.png"
	@$(BIN)/python -c "$$DEMO_RESULT" $(DEMO_OUT)/predictions/summary.json

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
