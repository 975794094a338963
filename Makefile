# The two set-up commands: `make serve` (serve the shipped models) and `make test`.
# Each creates its virtual environment on first use and reinstalls when pyproject.toml changes.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATASETS_DIR ?= $(abspath ../shared/datasets)
export DATASETS_DIR

.PHONY: serve test test-fast bench proto train-fashion-mnist train-cifar10 clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-serve: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[train,test]'
	touch $@ $(VENV)/.installed-serve

serve: $(VENV)/.installed-serve
	$(BIN)/gunicorn -c service/front_door/gunicorn.conf.py

test: $(VENV)/.installed-dev
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(VENV)/.installed-dev
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# The gRPC messages, generated from their .proto into a descriptor pool of their own: Triton's client registers
# the same message names in the default pool, and a process may hold both.
GRPC_PROTO := service/protocols/kserve_v2_grpc/grpc_predict_v2.proto
proto: $(VENV)/.installed-dev
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. $(GRPC_PROTO)
	sed -i 's/_descriptor_pool.Default()/_descriptor_pool.DescriptorPool()/' $(GRPC_PROTO:.proto=_pb2.py)

bench: $(VENV)/.installed-dev
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

train-fashion-mnist: $(VENV)/.installed-dev
	$(BIN)/python -m training train fashion_mnist --data-dir $(DATASETS_DIR)

train-cifar10: $(VENV)/.installed-dev
	$(BIN)/python -m training train cifar10 --data-dir $(DATASETS_DIR)

clean:
	rm -rf $(VENV) .cache .pytest_cache
