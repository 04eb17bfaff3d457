# lora - build, test, install.
#
#   make                 ./lora (CUDA parts too when nvcc exists; CUDA=0 for CPU only)
#   make check           every test; ends with "N passed, N failed"
#   make SANITIZE=1 check  the same under AddressSanitizer + UBSan
#   make demo            the built-in example
#   make fuzz            libFuzzer targets, FUZZ_SECONDS each (default 60)
#   make install PREFIX=/usr/local
#
# `make check` and `make demo` first install missing Debian packages (.ci/deps.sh).

VERSION   := 0.1.0
PREFIX    ?= /usr/local
CC        ?= cc
NVCC      ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
CUDA      ?= $(if $(NVCC),1,0)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))
SANITIZE  ?= 0
FUZZ_SECONDS ?= 60

ifeq ($(CUDA),1)
BSUFFIX   :=
else
BSUFFIX   := -cpu
endif
ifeq ($(SANITIZE),1)
BUILD     ?= build-san$(BSUFFIX)
SANFLAGS  := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
OPT       := -O1
else
BUILD     ?= build$(BSUFFIX)
SANFLAGS  :=
OPT       := -O2
endif

CFLAGS    ?= $(OPT) -g
CFLAGS    += -std=gnu11 -Wall -Wextra -pthread -I. -I/usr/include/x86_64-linux-gnu \
             -DLORA_VERSION='"$(VERSION)"' $(SANFLAGS)
LDLIBS    := -lcurl -larchive -lcrypto -lcjson -lpcre2-8 -llapacke -lopenblas -lm -ldl -pthread
LDFLAGS   += $(SANFLAGS)

# CUDA parts go into a plugin, liblora_cuda.so, that lora loads only when a
# command asks for the GPU (train/cuda.h): the program never links CUDA.
#
# Fat binaries: SASS for each architecture we support, plus PTX of the newest
# for the driver to compile on later cards.  -fmad=false: no multiply-add is
# contracted, so a kernel rounds as its CPU twin and as the CPU execution
# layer (built with -ffp-contract=off) do; kernels that want an FMA say so
# (__fmaf_rn).  Only lora_cuda_plugin is exported (-fvisibility=hidden).
CU_ARCHS  ?= 80 86 89 90 120
CU_GENCODE := $(foreach a,$(CU_ARCHS),-gencode arch=compute_$(a),code=sm_$(a)) \
             -gencode arch=compute_$(lastword $(CU_ARCHS)),code=compute_$(lastword $(CU_ARCHS))
ifeq ($(CUDA),1)
CU_SRC    := $(wildcard kernels/*.cu)
CU_OBJ    := $(CU_SRC:%.cu=$(BUILD)/%.o)
PLUGIN    := $(BUILD)/liblora_cuda.so
CU_LIBS   := -L$(CUDA_HOME)/lib64 -Xlinker -rpath -Xlinker $(CUDA_HOME)/lib64 -lcublas -lcudart
NVFLAGS   ?= -O2 -std=c++17 $(CU_GENCODE) -fmad=false -Werror all-warnings \
             -Xcompiler -Wall,-Wextra,-fPIC,-fvisibility=hidden -I. \
             -DLORA_CUDA_BUILD='"cuda $(shell $(NVCC) --version | sed -n "s/.*release \([0-9.]*\).*/\1/p") sm $(CU_ARCHS)"'
else
CU_OBJ    :=
PLUGIN    :=
endif

# The CPU execution layer (tests/simt): the same kernel sources built by the
# host C++ compiler with tests/simt/simt.h, in every build (CUDA=0 too), and
# the kernel tests against their CPU twins.  device.cu, merge.cu and
# blas_dev.cu talk to the CUDA runtime and cuBLAS: the layer has its own.
SIMT_CXX  ?= g++
SIMT_FLAGS := $(OPT) -g -std=c++17 -Wall -Wextra -ffp-contract=off -fPIC -pthread -I. \
             -I/usr/include/x86_64-linux-gnu $(SANFLAGS)
SIMT_CU   := $(filter-out kernels/device.cu kernels/merge.cu kernels/blas_dev.cu,$(wildcard kernels/*.cu))
SIMT_OBJ  := $(SIMT_CU:%.cu=$(BUILD)/simt/%.o) \
             $(patsubst %.cc,$(BUILD)/simt/%.o,$(filter-out tests/simt/test_%,$(wildcard tests/simt/*.cc)))
SIMT_TESTS := $(BUILD)/tests/test_simt $(BUILD)/tests/test_kernels
# Plugins for the loader's tests (tests/sh/cuda_plugin.sh): the layer as a
# liblora_cuda.so, and one that speaks another ABI version.
SIMT_PLUGINS := $(BUILD)/tools/liblora_cuda_simt.so $(BUILD)/tools/liblora_cuda_v0.so

LIB_SRC   := $(wildcard libadapter/*/*.c)
TRAIN_SRC := $(wildcard train/*.c)
CMD_SRC   := $(wildcard cmd/*.c)
TEST_SRC  := $(wildcard tests/unit/test_*.c)
FUZZ_SRC  := $(wildcard tests/fuzz/fuzz_*.c)
TOOL_SRC  := $(wildcard tests/tools/*.c)
MAN       := $(wildcard man/*.1 man/*.5)

LIB_OBJ   := $(LIB_SRC:%.c=$(BUILD)/%.o)
TRAIN_OBJ := $(TRAIN_SRC:%.c=$(BUILD)/%.o)
CMD_OBJ   := $(CMD_SRC:%.c=$(BUILD)/%.o)
TESTS     := $(TEST_SRC:tests/unit/%.c=$(BUILD)/tests/%) $(SIMT_TESTS)
TOOLS     := $(TOOL_SRC:tests/tools/%.c=$(BUILD)/tools/%)
ALL_OBJ   := $(LIB_OBJ) $(TRAIN_OBJ) $(CMD_OBJ)


.PHONY: tools all check check-cuda demo fuzz install clean deps FORCE

all: lora

lora: $(BUILD)/lora $(PLUGIN) FORCE
	@cmp -s $< $@ || cp $< $@
ifeq ($(CUDA),1)
	@cmp -s $(PLUGIN) liblora_cuda.so || cp $(PLUGIN) liblora_cuda.so
else
	@rm -f liblora_cuda.so
endif

$(BUILD)/lora: $(CMD_OBJ) $(BUILD)/libtrain.a $(BUILD)/libadapter.a
	$(CC) $(LDFLAGS) -o $@ $(CMD_OBJ) $(BUILD)/libtrain.a $(BUILD)/libadapter.a $(LDLIBS)

$(BUILD)/liblora_cuda.so: $(CU_OBJ)
	$(NVCC) -shared -o $@ $(CU_OBJ) $(CU_LIBS)

$(BUILD)/libadapter.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/libtrain.a: $(TRAIN_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/kernels/%.o: kernels/%.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libtrain.a $(BUILD)/libadapter.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libtrain.a $(BUILD)/libadapter.a $(LDLIBS)

$(BUILD)/simt/kernels/%.o: kernels/%.cu
	@mkdir -p $(dir $@)
	$(SIMT_CXX) $(SIMT_FLAGS) -MMD -MP -x c++ -include tests/simt/simt.h -c -o $@ $<

$(BUILD)/simt/tests/simt/%.o: tests/simt/%.cc
	@mkdir -p $(dir $@)
	$(SIMT_CXX) $(SIMT_FLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/libsimt.a: $(SIMT_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/tools/liblora_cuda_simt.so: $(BUILD)/libsimt.a
	@mkdir -p $(dir $@)
	$(SIMT_CXX) $(SIMT_FLAGS) $(LDFLAGS) -shared -o $@ -Wl,--whole-archive $< -Wl,--no-whole-archive -lopenblas

$(BUILD)/tools/liblora_cuda_v0.so: tests/simt/fake_plugin.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -fPIC -shared -DFAKE_VERSION=0 -o $@ $<

$(BUILD)/tests/test_simt: tests/simt/test_simt.cc $(BUILD)/libsimt.a $(BUILD)/libadapter.a
	@mkdir -p $(dir $@)
	$(SIMT_CXX) $(SIMT_FLAGS) $(LDFLAGS) -x c++ -include tests/simt/simt.h -o $@ $< -x none \
	  $(BUILD)/libsimt.a $(BUILD)/libadapter.a $(LDLIBS)

$(BUILD)/tests/test_kernels: tests/simt/test_kernels.c $(BUILD)/libsimt.a $(BUILD)/libtrain.a $(BUILD)/libadapter.a
	@mkdir -p $(dir $@)
	@mkdir -p $(BUILD)/simt/tests
	$(CC) $(CFLAGS) -c -o $(BUILD)/simt/tests/test_kernels.o $<
	$(SIMT_CXX) $(LDFLAGS) -o $@ $(BUILD)/simt/tests/test_kernels.o $(BUILD)/libsimt.a $(BUILD)/libtrain.a $(BUILD)/libadapter.a $(LDLIBS)

# The same kernel tests linked against the real plugin (make check-cuda).
$(BUILD)/tests-gpu/test_kernels: tests/simt/test_kernels.c $(PLUGIN) $(BUILD)/libtrain.a $(BUILD)/libadapter.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libtrain.a $(BUILD)/libadapter.a \
	  -L$(BUILD) -l:liblora_cuda.so -Wl,-rpath,$(CURDIR)/$(BUILD) $(LDLIBS)

# the CUDA backend's test runs on the CPU execution layer and makes odd models with mktiny
$(BUILD)/tests/test_model_cuda: | $(BUILD)/tools/liblora_cuda_simt.so $(BUILD)/tools/mktiny

$(BUILD)/tools/%: tests/tools/%.c $(BUILD)/libadapter.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libadapter.a $(LDLIBS)

tools: $(TOOLS) $(SIMT_PLUGINS)

deps:
	@sh .ci/deps.sh

check: deps
	@$(MAKE) --no-print-directory lora $(TESTS) $(TOOLS) $(SIMT_PLUGINS)
	@LORA=$(CURDIR)/$(BUILD)/lora LORA_TOOLS=$(CURDIR)/$(BUILD)/tools ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 sh tests/run.sh $(BUILD)

# GPU checks (needs a CUDA device): the kernel tests on the GPU, then under
# compute-sanitizer (memcheck, racecheck), then every test with the plugin.
SANITIZER ?= $(shell command -v compute-sanitizer 2>/dev/null || ls $(CUDA_HOME)/bin/compute-sanitizer 2>/dev/null)
check-cuda: lora $(TESTS) $(TOOLS) $(if $(PLUGIN),$(BUILD)/tests-gpu/test_kernels)
	@test -n "$(PLUGIN)" || { echo "check-cuda: nvcc not found, no CUDA plugin to test"; exit 1; }
	@test -n "$(SANITIZER)" || { echo "check-cuda: compute-sanitizer not found (set SANITIZER=)"; exit 1; }
	@CUDA_HOME=$(CUDA_HOME) SANITIZER=$(SANITIZER) sh tests/simt/check_cuda.sh $(BUILD)
	@LORA=$(CURDIR)/$(BUILD)/lora LORA_TOOLS=$(CURDIR)/$(BUILD)/tools LORA_CUDA_PLUGIN=$(CURDIR)/$(PLUGIN) LORA_TEST_CUDA=1 sh tests/run.sh $(BUILD)

demo: deps
	@$(MAKE) --no-print-directory lora $(TOOLS)
	@LORA=$(CURDIR)/$(BUILD)/lora LORA_TOOLS=$(CURDIR)/$(BUILD)/tools sh tests/demo.sh

FUZZ_CC ?= clang
fuzz: deps
	@mkdir -p build-fuzz
	@set -e; for f in $(FUZZ_SRC); do \
	  n=$$(basename $$f .c); \
	  $(FUZZ_CC) -g -O1 -std=gnu11 -Wno-unknown-attributes -I. -I/usr/include/x86_64-linux-gnu -fsanitize=fuzzer,address,undefined -DLORA_VERSION='"$(VERSION)"' \
	    -o build-fuzz/$$n $$f $(LIB_SRC) train/jinja.c $(LDLIBS); \
	  mkdir -p build-fuzz/corpus-$$n; \
	  cp -n tests/fuzz/corpus/$$n/* build-fuzz/corpus-$$n/ 2>/dev/null || true; \
	  echo "== $$n ($(FUZZ_SECONDS) s)"; \
	  build-fuzz/$$n -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 build-fuzz/corpus-$$n 2>&1 | \
	    grep -E 'stat::number_of_executed_units|stat::peak_rss|ERROR|SUMMARY|Done' || true; \
	  test -z "$$(ls crash-* leak-* timeout-* 2>/dev/null)" || { echo "fuzz: findings in $$(ls crash-* leak-* timeout-*)"; exit 1; }; \
	done

install: lora
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/man/man5
	install -m 755 lora $(DESTDIR)$(PREFIX)/bin/lora
	install -m 644 $(filter %.1,$(MAN)) $(DESTDIR)$(PREFIX)/share/man/man1/
	$(if $(filter %.5,$(MAN)),install -m 644 $(filter %.5,$(MAN)) $(DESTDIR)$(PREFIX)/share/man/man5/)
	$(if $(PLUGIN),install -d $(DESTDIR)$(PREFIX)/lib/lora && install -m 755 $(PLUGIN) $(DESTDIR)$(PREFIX)/lib/lora/)

clean:
	rm -rf build build-cpu build-san build-san-cpu build-fuzz lora liblora_cuda.so

-include $(ALL_OBJ:.o=.d) $(SIMT_OBJ:.o=.d) $(CU_OBJ:.o=.d)
