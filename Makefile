# The two commands of the README. Both create or refresh .venv in the checkout.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python
# Two workers keep the suite inside CI's budget on a 2-core machine.
PYTEST_ARGS ?= -n 2

.PHONY: demo test test-fast install clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/xltransfer demo

# Every test (the README's command and CI's).
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS) tests

# The default while developing: the tests not marked slow (pytest.ini says which are), a few
# minutes on 2 cores, with a fast test for every module.
test-fast: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS) -m "not slow" tests

clean:
	rm -rf $(VENV) demo_output
