# wsgate — plain Makefile. `make` builds ./wsgate; `make run` starts it on built-in
# defaults; `make test` builds and runs every test and ends "N passed, N failed";
# `make bench` runs the load generator against wsgate and nchan side by side.
# SAN=1 builds everything with -fsanitize=address,undefined into build-san/.

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

CORE_SRCS := $(filter-out src/main.c,$(wildcard src/*.c)) $(wildcard backends/*.c)
CORE_OBJS := $(patsubst %.c,$(BUILD)/%.o,$(CORE_SRCS))
LLHTTP_OBJS := $(BUILD)/llhttp/llhttp.o $(BUILD)/llhttp/api.o $(BUILD)/llhttp/http.o
OBJS := $(BUILD)/src/main.o $(CORE_OBJS) $(LLHTTP_OBJS)

UNIT_TESTS := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(wildcard tests/unit/test_*.c))
TOOLS := $(patsubst tests/tools/%.c,$(BUILD)/tools/%,$(wildcard tests/tools/*.c))

.PHONY: all deps run test test-unit test-san bench clean format
all: deps $(BIN)

deps:
	@scripts/deps.sh build

$(BIN): $(OBJS)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/llhttp/%.o: $(LLHTTP)/%.c
	@mkdir -p $(dir $@)
	$(CC) $(LLHTTP_CFLAGS) -c -o $@ $<

# Unit tests: each links the core objects (minus main) and cmocka. A test that needs
# stand-ins for core calls (test_memory) defines them and links only what it names in
# TEST_OBJS_<name> below.
TEST_OBJS_test_memory := $(BUILD)/backends/memory.o $(BUILD)/src/map.o $(BUILD)/src/msg.o \
                         $(BUILD)/src/util.o $(BUILD)/src/log.o
$(BUILD)/tests/%: tests/unit/%.c $(CORE_OBJS) $(LLHTTP_OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(shell pkg-config --cflags cmocka) $(LDFLAGS) -o $@ $< \
	    $(if $(TEST_OBJS_$*),$(TEST_OBJS_$*),$(CORE_OBJS) $(LLHTTP_OBJS)) \
	    $(LDLIBS) $(shell pkg-config --libs cmocka)

$(BUILD)/tools/%: tests/tools/%.c $(CORE_OBJS) $(LLHTTP_OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(CORE_OBJS) $(LLHTTP_OBJS) $(LDLIBS)

run: all
	./wsgate

test:
	@scripts/deps.sh test
	@$(MAKE) --no-print-directory $(BIN) $(UNIT_TESTS) $(TOOLS)
	@BUILD=$(BUILD) WSGATE_BIN=$(abspath $(BIN)) scripts/run-tests.sh

test-san:
	@$(MAKE) --no-print-directory SAN=1 test

bench:
	@scripts/deps.sh bench
	@$(MAKE) --no-print-directory $(BIN) bench/loadgen $(BUILD)/tools/kafka_mock
	@bench/run.sh

bench/loadgen: bench/loadgen.c
	$(CC) -std=c11 -D_GNU_SOURCE -O2 -g -Wall -Wextra -Werror -o $@ $< -lcrypto -lm

format:
	clang-format -i src/*.c include/*.h backends/*.c tests/unit/*.c bench/*.c

clean:
	rm -rf build build-san wsgate bench/loadgen

-include $(OBJS:.o=.d) $(UNIT_TESTS:=.d)
