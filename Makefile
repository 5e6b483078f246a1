# wsgate — plain Makefile. `make` builds ./wsgate; `make run` starts it on built-in
# defaults; `make test` builds and runs every test and ends "N passed, N failed";
# `make bench` runs the load generator against wsgate and nchan side by side.
# SAN=1 builds everything with -fsanitize=address,undefined into build-san/.
# `make fuzz` builds the libFuzzer targets (tests/fuzz) into build-fuzz/ and runs each
# for FUZZ_SECONDS (default 60); `make test` builds them too and runs them once.

CC      ?= cc
PKGS    := libuv hiredis libnats rdkafka inih libcrypto libjwt jansson
LLHTTP  := /usr/share/llhttp
ifeq ($(SAN),1)
BUILD   := build-san
OPT     := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
else
BUILD   := build
OPT     := -O2 -g
endif
BIN     := $(if $(filter 1,$(SAN)),$(BUILD)/wsgate,wsgate)

PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CFLAGS  += -std=c11 -D_GNU_SOURCE $(OPT) -Wall -Wextra -Werror -MMD -MP -Iinclude \
           -I/usr/share/include/llhttp $(PKG_CFLAGS)
LDFLAGS += $(OPT)
LDLIBS  += $(PKG_LIBS) -lwslay -lpthread
LLHTTP_CFLAGS := -std=c11 $(OPT) -Wall -Wextra -Wno-unused-parameter -Werror \
           -DLLHTTP_STRICT_MODE=1 -I/usr/share/include/llhttp

CORE_SRCS := $(filter-out src/main.c,$(wildcard src/*.c)) $(wildcard backends/*.c) \
             $(wildcard backends/*/*.c)
CORE_OBJS := $(patsubst %.c,$(BUILD)/%.o,$(CORE_SRCS)) $(BUILD)/gen/web_assets.o
LLHTTP_OBJS := $(BUILD)/llhttp/llhttp.o $(BUILD)/llhttp/api.o $(BUILD)/llhttp/http.o
OBJS := $(BUILD)/src/main.o $(CORE_OBJS) $(LLHTTP_OBJS)

UNIT_TESTS := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(wildcard tests/unit/test_*.c))
TOOLS := $(patsubst tests/tools/%.c,$(BUILD)/tools/%,$(wildcard tests/tools/*.c))

.PHONY: all deps run test test-unit test-san bench clean format fuzz fuzz-build
all: deps $(BIN)

deps:
	@scripts/deps.sh build

$(BIN): $(OBJS)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

# The browser client and demo page (web/) are compiled in as byte arrays.
$(BUILD)/gen/web_assets.c: web/wsgate.js web/demo/index.html scripts/embed.sh
	@mkdir -p $(dir $@)
	scripts/embed.sh $@
$(BUILD)/gen/web_assets.o: $(BUILD)/gen/web_assets.c src/web.h
	$(CC) $(CFLAGS) -Isrc -c -o $@ $<

# The core sees its private headers (src/*.h); backends see only include/.
$(BUILD)/src/%.o: src/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Isrc -c -o $@ $<

$(BUILD)/llhttp/%.o: $(LLHTTP)/%.c
	@mkdir -p $(dir $@)
	$(CC) $(LLHTTP_CFLAGS) -c -o $@ $<

# Unit tests: each links the core objects (minus main) and cmocka. A test that needs
# stand-ins for core calls (test_memory) defines them and links only what it names in
# TEST_OBJS_<name> below.
TEST_OBJS_test_memory := $(BUILD)/backends/memory.o $(BUILD)/src/later.o $(BUILD)/src/topics.o \
                         $(BUILD)/src/qdeliver.o $(BUILD)/src/map.o $(BUILD)/src/msg.o \
                         $(BUILD)/src/util.o $(BUILD)/src/log.o
TEST_OBJS_test_later := $(BUILD)/src/later.o
TEST_OBJS_test_topics := $(BUILD)/src/topics.o $(BUILD)/src/map.o $(BUILD)/src/msg.o \
                         $(BUILD)/src/util.o $(BUILD)/src/log.o
TEST_OBJS_test_qdeliver := $(BUILD)/src/qdeliver.o $(BUILD)/src/msg.o $(BUILD)/src/util.o
$(BUILD)/tests/%: tests/unit/%.c $(CORE_OBJS) $(LLHTTP_OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Isrc $(shell pkg-config --cflags cmocka) $(LDFLAGS) -o $@ $< \
	    $(if $(TEST_OBJS_$*),$(TEST_OBJS_$*),$(CORE_OBJS) $(LLHTTP_OBJS)) \
	    $(LDLIBS) $(shell pkg-config --libs cmocka)

$(BUILD)/tools/%: tests/tools/%.c $(CORE_OBJS) $(LLHTTP_OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Isrc $(LDFLAGS) -o $@ $< $(CORE_OBJS) $(LLHTTP_OBJS) $(LDLIBS)

run: all
	@echo "wsgate: demo page at http://127.0.0.1:8080/demo/?session=demo (browser client: /wsgate.js)"
	WSGATE_SERVER_DEMO=$${WSGATE_SERVER_DEMO:-on} ./wsgate

test:
	@scripts/deps.sh test
	@$(MAKE) --no-print-directory $(BIN) $(UNIT_TESTS) $(TOOLS) fuzz-build
	@BUILD=$(BUILD) WSGATE_BIN=$(abspath $(BIN)) FUZZ_BUILD=$(FUZZ_BUILD) \
	    FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/run-tests.sh

test-san:
	@$(MAKE) --no-print-directory SAN=1 test

# Builds the Dockerfile with podman (chroot isolation) and runs the gateway from the
# image's filesystem; see tests/container/test_image.py. Needs root. Not part of `test`.
.PHONY: test-container
test-container:
	@scripts/deps.sh container
	@/usr/bin/python3 tests/container/test_image.py

# Fuzzing: libFuzzer targets built with clang into build-fuzz/ (the core and llhttp are
# compiled again there, instrumented; build/ and build-san/ are not touched). `make fuzz`
# runs each target for FUZZ_SECONDS on a temp copy of tests/fuzz/corpus/<name>
# (scripts/run-fuzz.sh: never writes into the repo) and fails on a crash, leak or timeout,
# keeping the input in the temp dir it names.
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_BUILD   := build-fuzz
FUZZ_OPT     := -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
                -fno-omit-frame-pointer
FUZZ_CFLAGS   = -std=c11 -D_GNU_SOURCE $(FUZZ_OPT) -Wall -Wextra -Werror -MMD -MP -Iinclude -Isrc \
                -I/usr/share/include/llhttp $(PKG_CFLAGS)
FUZZ_LLHTTP_CFLAGS := -std=c11 $(FUZZ_OPT) -Wall -Wextra -Wno-unused-parameter -Werror \
                -DLLHTTP_STRICT_MODE=1 -I/usr/share/include/llhttp
FUZZ_TARGETS := fuzz_http fuzz_ws fuzz_config
FUZZ_BINS    := $(addprefix $(FUZZ_BUILD)/,$(FUZZ_TARGETS))
FUZZ_CORE_OBJS := $(patsubst %.c,$(FUZZ_BUILD)/%.o,$(CORE_SRCS)) $(FUZZ_BUILD)/gen/web_assets.o
FUZZ_LLHTTP_OBJS := $(FUZZ_BUILD)/llhttp/llhttp.o $(FUZZ_BUILD)/llhttp/api.o \
                    $(FUZZ_BUILD)/llhttp/http.o
FUZZ_GW_OBJS := $(FUZZ_BUILD)/tests/fuzz/fuzz_gw.o $(FUZZ_CORE_OBJS) $(FUZZ_LLHTTP_OBJS)

fuzz-build:
	@scripts/deps.sh test
	@$(MAKE) --no-print-directory $(FUZZ_BINS)

fuzz: fuzz-build
	@FUZZ_BUILD=$(FUZZ_BUILD) FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/run-fuzz.sh $(FUZZ_TARGETS)

$(FUZZ_BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c -o $@ $<

$(FUZZ_BUILD)/gen/web_assets.o: $(BUILD)/gen/web_assets.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -c -o $@ $<

$(FUZZ_BUILD)/llhttp/%.o: $(LLHTTP)/%.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_LLHTTP_CFLAGS) -c -o $@ $<

$(FUZZ_BUILD)/fuzz_http $(FUZZ_BUILD)/fuzz_ws: $(FUZZ_BUILD)/%: $(FUZZ_BUILD)/tests/fuzz/%.o \
                                                $(FUZZ_GW_OBJS)
	$(FUZZ_CC) $(FUZZ_OPT) -o $@ $^ $(LDLIBS)

$(FUZZ_BUILD)/fuzz_config: $(FUZZ_BUILD)/tests/fuzz/fuzz_config.o $(FUZZ_BUILD)/src/config.o \
                           $(FUZZ_BUILD)/src/config_keys.o $(FUZZ_BUILD)/src/util.o \
                           $(FUZZ_BUILD)/src/log.o
	$(FUZZ_CC) $(FUZZ_OPT) -o $@ $^ $(LDLIBS)

bench:
	@scripts/deps.sh bench
	@$(MAKE) --no-print-directory $(BIN) bench/loadgen bench/kafka_inflight $(BUILD)/tools/kafka_mock
	@bench/run.sh

bench/loadgen: bench/loadgen.c src/hmac.c src/hmac.h
	$(CC) -std=c11 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Werror -Isrc -o $@ bench/loadgen.c src/hmac.c -lcrypto -lm

# the kafka backend's one-in-flight ceiling without the gateway (see README, Kafka backend)
bench/kafka_inflight: bench/kafka_inflight.c
	$(CC) -std=c11 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Werror -o $@ $< -lrdkafka

format:
	clang-format -i src/*.c src/*.h include/*.h backends/*.c backends/*/*.[ch] tests/unit/*.c \
	    tests/fuzz/*.[ch] bench/*.c

clean:
	rm -rf build build-san build-fuzz wsgate bench/loadgen bench/kafka_inflight

-include $(OBJS:.o=.d) $(UNIT_TESTS:=.d) $(wildcard $(FUZZ_BUILD)/*/*.d $(FUZZ_BUILD)/*/*/*.d)
