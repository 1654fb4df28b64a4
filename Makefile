# Custos build. `make run` and `make check` are the two commands that matter;
# both install their own dependencies first (deploy/install-deps.sh).
#
#   make            build kmsd, kmsctl and the tests into $(BUILD)
#   make check      install deps, build, run every test (then make test-nss: the PKCS#11
#                   tests and an e2e subset again on NSS softoken, docs/pkcs11.md)
#   make check-asan the same suite under AddressSanitizer + UBSan (no recovery)
#   make run        install deps, build, create dev tokens/config, start kmsd
#   make bench      PKCS#11 layer benchmark against a bare PKCS#11 loop
#   make bench-scale  throughput at 10 / 10,000 / 100,000 keys and RSS over 5 min
#                   (SCALE_KEYS="10 10000 100000"; prepared tokens cached in build/bench-cache)
#   make soak       the kill -9 audit crash loop, 500 rounds (50 in make check), and
#                   the key create/rotate/import/escrow + audit append crash loop,
#                   100 rounds (8 in make check), then make soak-http
#   make soak-http  kmsd at ~70% of its measured peak for SOAK_SECONDS (600) with 1%
#                   hostile requests: no honest error, RSS/fds/sessions flat, audit
#                   events == requests, the log verifies offline (tests/bench/soak.py)
#   make fuzz       every libFuzzer target of tests/fuzz for FUZZ_SECONDS (default 60)
#                   each (clang; build/fuzz); make check runs each for 3 seconds
#   make fuzz-seeds regenerate the checked-in seed corpora (tests/fuzz/corpus)
#   make check-tsan the suite under ThreadSanitizer (build/tsan)
#   make install    PREFIX=/usr/local DESTDIR= : binaries, systemd unit, man pages,
#                   example config (see docs/operations.md)
#   make clean

CC      ?= gcc
BUILD   ?= build
PREFIX  ?= /usr/local
DESTDIR ?=
SAN     ?=

PKGS := p11-kit-1 libmicrohttpd libprotobuf-c jansson sqlite3 libpq libcurl openssl gnutls
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CHECK_LIBS := $(shell pkg-config --libs check 2>/dev/null)

WARN := -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wstrict-prototypes \
        -Wmissing-prototypes -Wwrite-strings -Wvla -Wimplicit-fallthrough \
        -Wno-format-nonliteral

ifeq ($(SAN),fuzz)
# libFuzzer targets (clang only): everything instrumented for coverage,
# ASan + UBSan, no recovery; only the fuzz binaries link libFuzzer's main.
OPT      := -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer-no-link,address,undefined \
            -fno-sanitize-recover=all
HARDEN   :=
LDHARDEN := -fsanitize=fuzzer,address,undefined
else ifeq ($(SAN),thread)
OPT      := -O1 -g -fno-omit-frame-pointer -fsanitize=thread
HARDEN   :=
LDHARDEN := -fsanitize=thread
else ifeq ($(SAN),1)
OPT      := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
            -fno-sanitize-recover=all
HARDEN   :=
LDHARDEN := -fsanitize=address,undefined
else
OPT      := -O2 -g
HARDEN   := -D_FORTIFY_SOURCE=3 -fstack-protector-strong -fPIE
LDHARDEN := -pie -Wl,-z,relro,-z,now
endif

# The tree is the architecture: one folder per layer, lowest first. Each
# folder compiles with its layer's include path: itself and the layers below
# it, nothing above, so an upward include fails the build (docs/development.md).
#   base      errors, log, secrets, text rules, metric counters: libc only
#   pkcs11    the HSM boundary            policy   the policy document
#   store     metadata store, key cache   audit    the log, tree, verifier
#   service   the registry (tokens by region, store, cache, policy, logs), config
#   contract  what a handler is: call, reply, audit facts, packing, authorization
#   keys      KeyService, FieldService, EscrowService handlers and key lifecycle
#   auditsvc  AuditService handlers
#   xks       the AWS KMS external key store proxy API (SigV4, endpoints, wire rules,
#             handlers): above keys, whose key layer (kms_keyuse, kms_usage) it uses
#   http      the front: framing, decoding, route table, health, metrics page
#   ctl       kmsctl (client side; reads logs/stores offline, never handlers)
L_base     := kms/base
L_pkcs11   := $(L_base) pkcs11
L_policy   := $(L_base) policy
L_store    := $(L_base) kms/store
L_audit    := $(L_pkcs11) kms/store kms/audit
L_service  := $(L_audit) policy kms/service
L_contract := $(L_service) kms/contract
L_keys     := $(L_contract) kms/keys
L_auditsvc := $(L_contract) kms/auditsvc
L_xks      := $(L_keys) kms/xks
L_http     := $(L_keys) kms/auditsvc kms/xks kms/http
L_ctl      := $(L_audit) kms/service kms/ctl
L_main     := $(L_http) kms/ctl
L_tests    := $(L_main) tests/lib
# The OpenSSL provider module is a client: base and itself, nothing else.
L_provider := $(L_base) kms/provider

KMS_DIRS := kms kms/base kms/service kms/contract kms/keys kms/auditsvc kms/xks kms/http \
            kms/store kms/audit kms/ctl
# No default: a folder without a line here compiles with no include path of
# ours and fails, rather than inheriting the tests' (tests/lib is L_tests only).
LAYER_INC :=
$(BUILD)/obj/tests/%.o:        LAYER_INC = $(L_tests)
$(BUILD)/obj/kms/base/%.o:     LAYER_INC = $(L_base)
$(BUILD)/obj/pkcs11/%.o:       LAYER_INC = $(L_pkcs11)
$(BUILD)/obj/policy/%.o:       LAYER_INC = $(L_policy)
$(BUILD)/obj/kms/store/%.o:    LAYER_INC = $(L_store)
$(BUILD)/obj/kms/audit/%.o:    LAYER_INC = $(L_audit)
$(BUILD)/obj/kms/service/%.o:  LAYER_INC = $(L_service)
$(BUILD)/obj/kms/contract/%.o: LAYER_INC = $(L_contract)
$(BUILD)/obj/kms/keys/%.o:     LAYER_INC = $(L_keys)
$(BUILD)/obj/kms/auditsvc/%.o: LAYER_INC = $(L_auditsvc)
$(BUILD)/obj/kms/xks/%.o:      LAYER_INC = $(L_xks)
$(BUILD)/obj/kms/http/%.o:     LAYER_INC = $(L_http)
$(BUILD)/obj/kms/ctl/%.o:      LAYER_INC = $(L_ctl)
$(BUILD)/obj/kms/%_main.o:     LAYER_INC = $(L_main)
CPPFLAGS += -D_GNU_SOURCE -I$(BUILD)/gen
CFLAGS   += -std=c17 $(OPT) $(WARN) $(HARDEN) $(PKG_CFLAGS) -pthread
LDFLAGS  += $(LDHARDEN) -pthread
LDLIBS   += $(PKG_LIBS) -ldl

PROTOS    := $(wildcard proto/*.proto)
PROTO_C   := $(patsubst proto/%.proto,$(BUILD)/gen/proto/%.pb-c.c,$(PROTOS))
PROTO_H   := $(PROTO_C:.c=.h)

MAINS    := $(wildcard kms/*_main.c)

# The `custos` OpenSSL provider module (docs/openssl-provider.md): its own
# position-independent objects (-fPIC, not libcustos's -fPIE), the two base
# files it needs and the generated protobuf code, linked into one .so that
# exports OSSL_provider_init only.
PROVIDER      := $(BUILD)/lib/ossl-modules/custos.so
PROV_SRCS     := $(wildcard kms/provider/*.c) kms/base/kms_error.c kms/base/kms_secret.c
PROV_OBJS     := $(patsubst %.c,$(BUILD)/pic/%.o,$(PROV_SRCS)) $(BUILD)/pic/gen/proto/key.pb-c.o
PIC_CFLAGS     = $(filter-out -fPIE,$(CFLAGS)) -fPIC -fvisibility=hidden
PROV_LIBS     := $(shell pkg-config --libs libcurl libprotobuf-c jansson libcrypto 2>/dev/null)
LIB_SRCS := $(wildcard pkcs11/*.c policy/*.c) \
            $(filter-out $(MAINS),$(foreach d,$(KMS_DIRS),$(wildcard $(d)/*.c)))
LIB_OBJS := $(patsubst %.c,$(BUILD)/obj/%.o,$(LIB_SRCS)) \
            $(patsubst $(BUILD)/gen/%.c,$(BUILD)/obj/gen/%.o,$(PROTO_C))
LIB      := $(BUILD)/libcustos.a

BINS := $(patsubst kms/%_main.c,$(BUILD)/bin/%,$(MAINS))

TEST_LIB_SRCS := $(wildcard tests/lib/*.c)
TEST_LIB_OBJS := $(patsubst %.c,$(BUILD)/obj/%.o,$(TEST_LIB_SRCS))
TEST_SRCS     := $(wildcard tests/unit/test_*.c)
TEST_BINS     := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(TEST_SRCS))
# loadgen is a standalone client (no libcustos): built into tools/.
BENCH_SRCS    := $(filter-out tests/bench/loadgen.c,$(wildcard tests/bench/*.c))
BENCH_BINS    := $(patsubst tests/bench/%.c,$(BUILD)/bench/%,$(BENCH_SRCS))
LOADGEN       := $(BUILD)/tools/loadgen
# The fault-injecting PKCS#11 shim (tests/p11fault, docs/development.md).
P11FAULT      := $(BUILD)/lib/p11_fault.so
# The fsync/fdatasync failing LD_PRELOAD interposer (tests/fsfault).
FSFAULT       := $(BUILD)/lib/fs_fault.so

# Install layout. The unit's paths follow PREFIX; configuration is always
# under /etc/custos and state under /var/lib/custos (StateDirectory=).
BINDIR  ?= $(PREFIX)/bin
SBINDIR ?= $(PREFIX)/sbin
MANDIR  ?= $(PREFIX)/share/man
UNITDIR ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
DATADIR ?= $(PREFIX)/share/custos
DOCDIR  ?= $(PREFIX)/share/doc/custos

# Every tests/fuzz/fuzz_*.c is a target: adding a parser's fuzzer is adding
# the file (and its seeds in tests/fuzz/corpus/<name>/).
FUZZ_SRCS     := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BINS     := $(patsubst tests/fuzz/%.c,$(BUILD)/fuzz/%,$(FUZZ_SRCS))
FUZZ_BUILD    ?= build/fuzz
FUZZ_CC       ?= clang
FUZZ_SECONDS  ?= 60

.PHONY: all deps check check-asan check-tsan fuzz-bins-build test test-nss run bench bench-scale soak soak-http install clean \
        fuzz fuzz-bins fuzz-seeds fleet fleet-stop
# Keep every intermediate (objects of mains and tests, generated code).
.SECONDARY:

all: $(BINS) $(TEST_BINS) $(BENCH_BINS) $(LOADGEN) $(P11FAULT) $(FSFAULT) $(PROVIDER)

deps:
	@sh deploy/install-deps.sh

# Generated protobuf code comes first: every object may include it.
$(BUILD)/gen/proto/%.pb-c.c $(BUILD)/gen/proto/%.pb-c.h: proto/%.proto
	@mkdir -p $(BUILD)/gen
	protoc-c --c_out=$(BUILD)/gen $<

$(BUILD)/obj/gen/%.o: $(BUILD)/gen/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(filter-out -Wmissing-prototypes,$(CFLAGS)) -Wno-unused-parameter -c -o $@ $<

$(BUILD)/obj/%.o: %.c $(PROTO_H)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(addprefix -I,$(LAYER_INC)) $(CFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/pic/gen/%.o: $(BUILD)/gen/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(filter-out -Wmissing-prototypes,$(PIC_CFLAGS)) -Wno-unused-parameter -c -o $@ $<

$(BUILD)/pic/%.o: %.c $(PROTO_H)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(addprefix -I,$(L_provider)) $(PIC_CFLAGS) -MMD -MP -c -o $@ $<

# Under SAN=1 the module is instrumented like everything else: the check
# binary that loads it is. The stock openssl CLI is not, so the e2e test
# runs it with the module's libasan preloaded (tests/e2e/test_provider.sh).
$(PROVIDER): $(PROV_OBJS) kms/provider/custos.map
	@mkdir -p $(dir $@)
	$(CC) -shared -o $@ $(PROV_OBJS) -Wl,--version-script=kms/provider/custos.map \
	    -Wl,--no-undefined -Wl,-z,relro,-z,now $(filter -fsanitize=%,$(LDHARDEN)) \
	    $(PROV_LIBS) -pthread

$(LIB): $(LIB_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@
	ar rcs $@ $^

$(BUILD)/bin/%: $(BUILD)/obj/kms/%_main.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/obj/tests/unit/%.o $(TEST_LIB_OBJS) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(TEST_LIB_OBJS) $(LIB) $(LDLIBS) $(CHECK_LIBS)

$(BUILD)/fuzz/%: $(BUILD)/obj/tests/fuzz/%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS)

# The seed generator is an ordinary program (no libFuzzer main).
$(BUILD)/tools/fuzz_seedgen: $(BUILD)/obj/tests/fuzz/seedgen.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS)

$(BUILD)/bench/%: $(BUILD)/obj/tests/bench/%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS)

# The HTTP load generator of the soak: a client only, linked with nothing
# of ours (tests/bench/loadgen.c).
$(LOADGEN): $(BUILD)/obj/tests/bench/loadgen.o
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $<

$(P11FAULT): tests/p11fault/p11_fault.c
	@mkdir -p $(dir $@)
	$(CC) -D_GNU_SOURCE -std=c17 $(OPT) $(WARN) $(shell pkg-config --cflags p11-kit-1) -fPIC \
	    -shared -o $@ $< $(filter -fsanitize=%,$(LDHARDEN)) -ldl -pthread

# Not instrumented, even in the sanitizer builds: it is preloaded into an
# instrumented kmsd and only forwards two calls.
$(FSFAULT): tests/fsfault/fs_fault.c
	@mkdir -p $(dir $@)
	$(CC) -D_GNU_SOURCE -std=c17 -O2 -g $(WARN) -fPIC -shared -o $@ $< -ldl -pthread

-include $(shell find $(BUILD)/obj $(BUILD)/pic -name '*.d' 2>/dev/null)

# `check` runs in a sub-make so that dependencies are installed before the
# pkg-config probes above are evaluated on a fresh machine.
check: deps
	@$(MAKE) --no-print-directory fuzz-bins-build
	@$(MAKE) --no-print-directory test

# tests/run-tests.sh runs the fuzz targets of $(FUZZ_BUILD) for a few
# seconds each when they are built.
FUZZ_RUN ?= $(FUZZ_BUILD)
test: all
	@BUILD=$(BUILD) CUSTOS_FUZZ_BUILD=$(FUZZ_RUN) sh tests/run-tests.sh
	@$(MAKE) --no-print-directory test-nss

# The same PKCS#11 layer and a subset of the e2e suite on NSS's softoken, the
# second PKCS#11 implementation (docs/pkcs11.md, "Testing on NSS").
test-nss: all
	@BUILD=$(BUILD) sh tests/run-tests.sh --nss

# The fuzz targets are left to `make check`: they are already built with
# ASan and UBSan, so running them again here would repeat the same runs. So
# is the benchmark smoke run (its figures mean nothing under ASan, and
# test_soak drives kmsd under load here). Keeps CI's two suites in budget.
check-asan: deps
	@CUSTOS_TEST_SKIP=test_bench_smoke $(MAKE) --no-print-directory BUILD=build/asan SAN=1 \
		FUZZ_RUN=none test

check-tsan: deps
	@$(MAKE) --no-print-directory BUILD=build/tsan SAN=thread test

fuzz-bins: $(FUZZ_BINS)

fuzz-bins-build:
	@$(MAKE) --no-print-directory BUILD=$(FUZZ_BUILD) CC=$(FUZZ_CC) SAN=fuzz fuzz-bins

fuzz: deps
	@$(MAKE) --no-print-directory fuzz-bins-build
	@FUZZ_BUILD=$(FUZZ_BUILD) sh tests/fuzz/run-fuzz.sh $(FUZZ_SECONDS)

fuzz-seeds: $(BUILD)/tools/fuzz_seedgen
	@sh tests/fuzz/make-seeds.sh $(BUILD)/tools/fuzz_seedgen

bench: deps
	@$(MAKE) --no-print-directory all
	@BUILD=$(BUILD) sh tests/bench/run-bench.sh
	@# The fleet row (docs/fleet.md): haproxy, 1-3 nodes on PostgreSQL, audit commit latency.
	@BUILD=$(BUILD) sh tests/bench/bench_fleet.sh | tee $(BUILD)/bench/fleet-$$(date -u +%Y%m%dT%H%M%SZ).txt

bench-scale: deps
	@$(MAKE) --no-print-directory all
	@mkdir -p $(BUILD)/bench-cache
	@/usr/bin/python3 tests/bench/bench_scale.py $(BUILD) $(BUILD)/bench-cache \
	    $${SCALE_KEYS:-10 10000 100000} | tee $(BUILD)/bench/scale-$$(date -u +%Y%m%dT%H%M%SZ).txt

soak: deps
	@$(MAKE) --no-print-directory all
	@CUSTOS_CRASH_ROUNDS=$${CUSTOS_CRASH_ROUNDS:-500} BUILD=$(BUILD) \
	    sh tests/run-tests.sh --only test_audit_crash
	@CUSTOS_KEY_CRASH_ROUNDS=$${CUSTOS_KEY_CRASH_ROUNDS:-100} BUILD=$(BUILD) \
	    sh tests/run-tests.sh --only test_key_crash
	@BUILD=$(BUILD) sh tests/bench/run-soak.sh

soak-http: deps
	@$(MAKE) --no-print-directory all
	@BUILD=$(BUILD) sh tests/bench/run-soak.sh

run: deps
	@$(MAKE) --no-print-directory all
	@BUILD=$(BUILD) sh deploy/dev-run.sh

# A local fleet (docs/fleet.md): PostgreSQL, three kmsd nodes sharing one
# SoftHSMv2 token directory, haproxy in front on 127.0.0.1:8700. It runs in
# the background until make fleet-stop; state is kept in $(FLEET_DIR).
FLEET_DIR ?= var/fleet
fleet: deps
	@$(MAKE) --no-print-directory all
	@BUILD=$(BUILD) sh deploy/fleet.sh start $(FLEET_DIR)

fleet-stop:
	@sh deploy/fleet.sh stop $(FLEET_DIR)

install: $(BINS) $(PROVIDER)
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(SBINDIR) $(DESTDIR)$(DATADIR)/examples \
	    $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(DOCDIR) \
	    $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8
	install -m 0755 $(BUILD)/bin/kmsd $(DESTDIR)$(SBINDIR)/kmsd
	install -m 0755 $(BUILD)/bin/kmsctl $(DESTDIR)$(BINDIR)/kmsctl
	sed 's|@SBINDIR@|$(SBINDIR)|g' deploy/systemd/kmsd.service > $(DESTDIR)$(UNITDIR)/kmsd.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/kmsd.service
	install -m 0644 deploy/systemd/custos.sysusers $(DESTDIR)$(SYSUSERSDIR)/custos.conf
	install -m 0644 docs/man/kmsctl.1 $(DESTDIR)$(MANDIR)/man1/kmsctl.1
	install -m 0644 docs/man/kmsd.json.5 $(DESTDIR)$(MANDIR)/man5/kmsd.json.5
	install -m 0644 docs/man/kmsd.8 $(DESTDIR)$(MANDIR)/man8/kmsd.8
	install -m 0644 deploy/examples/production/kmsd.json deploy/examples/production/policy.json \
	    $(DESTDIR)$(DATADIR)/examples/
	install -m 0755 deploy/dev-hsm.sh $(DESTDIR)$(DATADIR)/
	install -m 0755 deploy/tls-hsm-key.py $(DESTDIR)$(DATADIR)/
	install -m 0644 docs/operations.md docs/configuration.md docs/openssl-provider.md \
	    $(DESTDIR)$(DOCDIR)/
	# OpenSSL's modules directory, as libcrypto reports it (OPENSSL_MODULES
	# overrides it at run time; docs/openssl-provider.md).
	md=$$(pkg-config --variable=modulesdir libcrypto 2>/dev/null || \
	      openssl version -m | sed 's/^MODULESDIR: "\(.*\)"$$/\1/'); \
	    install -d "$(DESTDIR)$$md" && install -m 0644 $(PROVIDER) "$(DESTDIR)$$md/custos.so"

clean:
	rm -rf build
