# mambabyte: one binary, `mambabyte`, with subcommands. `make` builds it (optimised) in build/rel,
# `make test` builds the ASan+UBSan variant in build/asan and runs every test against it.
CC      ?= cc
CXX     ?= c++
ARCH    ?= -march=x86-64-v3
WARN    := -Wall -Wextra -Werror -Wno-unused-parameter
VERSION := $(shell git describe --always --dirty 2>/dev/null || echo dev)
CSTD    := -std=c11 -D_GNU_SOURCE -DMB_VERSION='"$(VERSION)"'
INC     := -Imodel -Iconfig -Ispeculative -Iserver -Icli -I/usr/include/cjson
LIBS    := -lmicrohttpd -lcjson -lsentencepiece -lcurl -lpthread -ldl -lm
REL_FLAGS  := -O3 $(ARCH) -g
ASAN_FLAGS := -O1 $(ARCH) -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined

# The CPU kernels' ISA variants (model/cpu_*.c): compiled with their own -m flags on top of the
# x86-64-v3 baseline; cpu.c calls them only on a processor that has those features.
ISA_C   := model/cpu_avx512.c
build/%/model/cpu_avx512.o: ISA := -mavx512f -mavx512dq -mavx512bw -mavx512vl

# the engine (model/, speculative/) and the application around it (server/, config/)
ENG_C   := $(wildcard model/*.c speculative/*.c)
ENG_CC  := $(wildcard speculative/*.cc)
APP_C   := $(wildcard config/*.c) $(wildcard server/*.c) build/gen/openapi_json.c
CLI_C   := $(wildcard cli/*.c)
LG_C    := cli/lg_answer.c cli/lg_prompts.c cli/lg_report.c # loadgen without its network loop
LIB_C   := $(ENG_C) $(APP_C)
HDRS    := $(wildcard */*.h tests/*/*.h)
TESTS   := $(patsubst tests/unit/%.c,%,$(wildcard tests/unit/test_*.c))

# The CUDA backend (kernels/): a shared object beside the binary, loaded at run time when a GPU
# is usable, so the same binary runs without one. Built whenever nvcc is found; CUDA=0 turns it
# off. SASS for sm_90 (H100, H200) and compute_90 PTX for later GPUs.
NVCC    ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
CU_SRC  := $(wildcard kernels/*.cu)
CUDA    ?= $(if $(and $(NVCC),$(CU_SRC)),1,0)
CU_ARCH := -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90
NVFLAGS := -std=c++17 -O3 -lineinfo --fmad=false $(CU_ARCH) -Imodel \
           -Xcompiler -fPIC,-fvisibility=hidden,-Wall,-Wextra,-Werror,-Wno-unused-parameter
ifeq ($(CUDA),1)
CUDA_LIB_rel  := build/rel/libmambabyte_cuda.so
CUDA_LIB_asan := build/asan/libmambabyte_cuda.so
endif
build/rel/libmambabyte_cuda.so: $(CU_SRC) $(wildcard kernels/*.h) $(HDRS)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -shared -cudart static -o $@ $(CU_SRC)
build/asan/libmambabyte_cuda.so: build/rel/libmambabyte_cuda.so
	@mkdir -p $(dir $@)
	cp $< $@

# GET /openapi.json serves server/openapi.json, compiled in as a C array (od: no xxd needed)
build/gen/openapi_json.c: server/openapi.json
	@mkdir -p $(dir $@)
	{ echo '/* generated from server/openapi.json by the Makefile */'; \
	  echo 'const char srv_openapi_json[] = {'; \
	  od -An -v -tx1 $< | sed 's/\([0-9a-f][0-9a-f]\)/0x\1,/g'; echo '0};'; } > $@

.SECONDARY:
.PHONY: all test test-gpu fuzz run bench bench-serve format format-check clean deps test-deps
all: build/rel/mambabyte

define variant
build/$(1)/%.o: %.c $$(HDRS)
	@mkdir -p $$(dir $$@)
	$$(CC) $$(CSTD) $$(WARN) $(2) $$(ISA) $$(INC) -c $$< -o $$@
build/$(1)/%.o: %.cc $$(HDRS)
	@mkdir -p $$(dir $$@)
	$$(CXX) -std=c++17 $$(WARN) $(2) $$(INC) -c $$< -o $$@
build/$(1)/libengine.a: $$(patsubst %.c,build/$(1)/%.o,$$(ENG_C)) $$(patsubst %.cc,build/$(1)/%.o,$$(ENG_CC))
	@rm -f $$@
	ar rcs $$@ $$^
build/$(1)/libapp.a: $$(patsubst %.c,build/$(1)/%.o,$$(APP_C))
	@rm -f $$@
	ar rcs $$@ $$^
build/$(1)/mambabyte: $$(patsubst %.c,build/$(1)/%.o,$$(CLI_C)) build/$(1)/libapp.a build/$(1)/libengine.a $$(CUDA_LIB_$(1))
	$$(CXX) $(2) -o $$@ $$(filter-out %.so,$$^) $$(LIBS)
# engine tests link the engine alone; test_srv_* and test_cfg_* the application too
build/$(1)/tests/test_srv_%: build/$(1)/tests/unit/test_srv_%.o build/$(1)/libapp.a build/$(1)/libengine.a
	$$(CXX) $(2) -o $$@ $$^ $$(LIBS)
build/$(1)/tests/test_cfg_%: build/$(1)/tests/unit/test_cfg_%.o build/$(1)/libapp.a build/$(1)/libengine.a
	$$(CXX) $(2) -o $$@ $$^ $$(LIBS)
# loadgen's test links the parts of it that need no server (answers, prompts, figures)
build/$(1)/tests/test_lg_%: build/$(1)/tests/unit/test_lg_%.o $$(patsubst %.c,build/$(1)/%.o,$$(LG_C)) build/$(1)/libengine.a
	$$(CXX) $(2) -o $$@ $$^ $$(LIBS)
build/$(1)/tests/%: build/$(1)/tests/unit/%.o build/$(1)/libengine.a
	@mkdir -p $$(dir $$@)
	$$(CXX) $(2) -o $$@ $$^ $$(LIBS)
endef
$(eval $(call variant,rel,$(REL_FLAGS)))
$(eval $(call variant,asan,$(ASAN_FLAGS)))

# The GPU tests (tests/gpu): the optimised build, since ASan and the CUDA runtime do not mix;
# on a machine without a usable GPU they print one "skipped" line. tests/gpu/run.sh also runs
# the real-HTTP tests against `serve --device cuda`, eval parity and compute-sanitizer.
build/%/tests/gpu/test_gpu: tests/gpu/test_gpu.c build/%/libengine.a $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CSTD) $(WARN) $(if $(findstring asan,$*),$(ASAN_FLAGS),$(REL_FLAGS)) $(INC) -Itests/unit -c $< -o $@.o
	$(CXX) $(if $(findstring asan,$*),$(ASAN_FLAGS),$(REL_FLAGS)) -o $@ $@.o build/$*/libengine.a $(LIBS)
test-gpu: build/rel/mambabyte build/rel/tests/gpu/test_gpu
	tests/gpu/run.sh

# Every test (unit, then real HTTP against the daemon), under ASan+UBSan, then a bounded fuzz run.
test: test-deps
	$(MAKE) build/asan/mambabyte $(addprefix build/asan/tests/,$(TESTS)) build/asan/tests/gpu/test_gpu
	MB_BIN=build/asan/mambabyte MB_BUILD=build/asan tests/run.sh
	@echo "== tests/http/test_spec_drafter.py whole (240 books_test prompts) on the optimised build"
	$(MAKE) build/rel/mambabyte
	MB_BIN=build/rel/mambabyte python3 tests/http/test_spec_drafter.py
	@echo "== tests/gpu/test_gpu on the CPU backend (its checks, under ASan; make test-gpu: on a GPU)"
	MB_GPU_TEST_DEVICE=cpu MB_GPU_TEST_QUICK=1 build/asan/tests/gpu/test_gpu
	$(MAKE) fuzz FUZZ_SECONDS=$${FUZZ_SECONDS:-20}

# ThreadSanitizer: the daemon built with -fsanitize=thread (build/tsan) against every real-HTTP
# test, the concurrency tests among them; the first race reported stops the daemon and fails its
# test. `make test` runs it first (a few minutes on 2 cores; all of `make test` about 8).
TSAN_FLAGS := -O1 $(ARCH) -g -fno-omit-frame-pointer -fsanitize=thread
$(eval $(call variant,tsan,$(TSAN_FLAGS)))
.PHONY: test-tsan
test-tsan: test-deps
	$(MAKE) build/tsan/mambabyte
	@set -e; for t in tests/http/test_*.py; do echo "== tsan $$t"; \
	  MB_BIN=build/tsan/mambabyte TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" python3 $$t; done
test: test-tsan

# The deployment files (deploy/): two daemons behind Debian's nginx with the shipped
# configuration, a daemon killed, and the files that cannot run here (systemd unit, Kubernetes
# manifests, Dockerfiles) checked as far as this machine allows; tests/deploy/test_deploy.py.
.PHONY: test-deploy
test-deploy: test-deps
	$(MAKE) build/asan/mambabyte
	MB_BIN=build/asan/mambabyte python3 tests/deploy/test_deploy.py
test: test-deploy

deps:
	@tools/deps.sh
test-deps:
	@tools/deps.sh --test

FUZZ_SECONDS ?= 60
FUZZ_TARGETS := $(patsubst tests/fuzz/%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_CC := clang $(CSTD) $(WARN) -O1 -g $(ARCH) -fsanitize=fuzzer,address,undefined $(INC)
FUZZ_CXX := clang++ -std=c++17 $(WARN) -O1 -g $(ARCH) -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize=vptr $(INC)
FUZZ_CC_OBJ := $(patsubst %.cc,build/fuzz/%.o,$(ENG_CC)) $(patsubst %.c,build/fuzz/%.o,$(ISA_C))
build/fuzz/%.o: %.cc $(HDRS)
	@mkdir -p $(dir $@)
	$(FUZZ_CXX) -c $< -o $@
build/fuzz/model/%.o: model/%.c $(HDRS)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(ISA) -c $< -o $@
build/fuzz/fuzz_safetensors: tests/fuzz/fuzz_safetensors.c $(ENG_C) $(FUZZ_CC_OBJ) $(HDRS)
	@mkdir -p build/fuzz
	$(FUZZ_CC) -o $@ $< $(filter-out $(ISA_C),$(ENG_C)) $(FUZZ_CC_OBJ) $(LIBS) -lstdc++
build/fuzz/fuzz_answer: tests/fuzz/fuzz_answer.c $(LG_C) $(ENG_C) $(FUZZ_CC_OBJ) $(HDRS)
	@mkdir -p build/fuzz
	$(FUZZ_CC) -o $@ $< $(LG_C) $(filter-out $(ISA_C),$(ENG_C)) $(FUZZ_CC_OBJ) $(LIBS) -lstdc++
build/fuzz/%: tests/fuzz/%.c $(LIB_C) $(FUZZ_CC_OBJ) $(HDRS)
	@mkdir -p build/fuzz
	$(FUZZ_CC) -o $@ $< $(filter-out $(ISA_C),$(LIB_C)) $(FUZZ_CC_OBJ) $(LIBS) -lstdc++
fuzz: $(addprefix build/fuzz/,$(FUZZ_TARGETS))
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p build/fuzz/corpus-$$t; \
	  echo "fuzz $$t for $(FUZZ_SECONDS)s"; \
	  build/fuzz/$$t -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -artifact_prefix=build/fuzz/ build/fuzz/corpus-$$t tests/fuzz/seeds-$$t >build/fuzz/$$t.log 2>&1 \
	    || { tail -40 build/fuzz/$$t.log; exit 1; }; \
	  tail -1 build/fuzz/$$t.log; \
	done

# Serve a bundled pair (on the GPU when one is usable, else the CPU): the byte model, with the
# subword drafter for speculative decoding (the server drafts where the measured cost says it
# pays: on a GPU; on a small CPU it switches itself off). With the CUDA backend built and a GPU
# that nvidia-smi sees, the pair is mambabyte-base + drafter-base (24 layers: better text; with
# it speculation pays on an H200), otherwise mambabyte-small + drafter-small (base decodes about
# four times slower on two CPU cores). RUN_MODEL=DIR [RUN_DRAFT=DIR] serves another model, with
# RUN_DRAFT's drafter or none.
run: deps
	$(MAKE) build/rel/mambabyte
	@if [ -n "$(RUN_MODEL)" ]; then m="$(RUN_MODEL)" d="$(RUN_DRAFT)"; \
	elif [ -f build/rel/libmambabyte_cuda.so ] && nvidia-smi -L >/dev/null 2>&1; then \
	  m=models/mambabyte-base d=models/drafter-base; \
	else m=models/mambabyte-small d=models/drafter-small; fi; \
	echo "make run: serving $$m$${d:+ with the drafter $$d}"; \
	exec build/rel/mambabyte serve -m "$$m" $${d:+--draft "$$d"}

build/rel/bench_engine: bench/bench_engine.c build/rel/libengine.a
	$(CC) $(CSTD) $(WARN) $(REL_FLAGS) $(INC) -o $@ $^ -lcjson -lpthread -lm
bench: build/rel/mambabyte
	bench/engine.sh
# The serving benchmark: a `mambabyte loadgen` sweep against a local daemon on the bundled model
# (bench/server.sh, bench/sweep.sh), leaving the table, the JSON files and the plot in
# build/bench-serve. bench/efficiency.sh compares the daemon with the engine alone.
bench-serve: build/rel/mambabyte
	@tools/deps.sh --bench
	bench/server.sh
# The GPU benchmark (bench/gpu.sh runs it on a machine with a GPU): the backend's kernels are
# compiled in for the invariance-cost comparison against cuBLAS.
build/rel/bench_gpu: bench/bench_gpu.cu kernels/cu_matmul.cu kernels/cu_kernels.h build/rel/libengine.a
	$(NVCC) -std=c++17 -O3 --fmad=false $(CU_ARCH) -Imodel -o $@ bench/bench_gpu.cu \
	  kernels/cu_matmul.cu build/rel/libengine.a -lcublas -lcjson -ldl -lpthread -lm

format:
	clang-format -i $$(git ls-files '*.c' '*.h' '*.cc' '*.cu')
format-check:
	clang-format --dry-run --Werror $$(git ls-files '*.c' '*.h' '*.cc' '*.cu')

clean:
	rm -rf build
