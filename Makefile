# Monohuman: every target sets itself up; `make demo` and `make test` are the only commands a new user needs.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# anny builds an ~800 MB cache on first load (~50 s): keep it in one stable place per machine.
export ANNY_CACHE_DIR ?= $(HOME)/.cache/monohuman/anny
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup demo test test-fast bench addon example clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

demo: setup
	$(PY) -m core info
	$(PY) -m core reconstruct examples/person.png -o out/person_fit.glb --preview out/person_fit_preview.png
	$(PY) -m core reconstruct examples/person.png -o out/person.glb --method vrn --preview out/person_preview.png --quiet
	$(PY) -m core reconstruct examples/person.png -o out/person_rigged.glb --method vrn --rig --quiet
	$(PY) -m core reconstruct examples/person.png -o out/person_hmnet.glb --method hmnet --quiet

test: setup
	$(PY) -m pytest -q

# The edit loop: everything but the tests that render with Blender or train (marked `slow`).
test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) bench/run_all.py

addon: setup
	$(PY) scripts/build_addon.py

# Re-render the bundled example photo (it is made by the project's own headless Blender, not taken from elsewhere).
example: setup
	$(PY) -m train.render_photo --out examples/person.png --size 512 --seed 7

clean:
	rm -rf out dist .pytest_cache
