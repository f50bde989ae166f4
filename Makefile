# The two commands a newcomer needs (see README.md).
PY ?= python3

.PHONY: install test demo

install:
	$(PY) -m pip install -q -e '.[test]'

# Install everything, then run the whole (hermetic, about a minute) test suite. One thread per
# process: some tests run a training subprocess beside the test process on 2 cores.
test: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

# Install everything, then generate reviews (with the bundled model, or a quick tiny model if none is bundled).
demo: install
	$(PY) -m reviewgan.demo
