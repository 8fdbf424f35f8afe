# Switchyard — the two commands a newcomer needs: `make run` and `make test`.
# Both work on a fresh Debian machine with Rust: they install redis-server when missing.

REDIS_PORT ?= 6379
CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# (env after sudo: sudo's env_reset would drop DEBIAN_FRONTEND given before it)
APT_INSTALL = $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq

.PHONY: run dev-secret test proptest build release deps test-deps redis lint fmt check-config clean demo bench bench-deps fuzz fuzz-deps k8s-check

## Run one instance on 127.0.0.1:5010 against Redis on 127.0.0.1:$(REDIS_PORT), in the
## development setup: a secret kept in target/dev/secret (made once), and ready-made tokens
## printed at start (`serve --dev`). Production sets its own keys: docs/security.md.
## Other ports: `make run REDIS_PORT=6390 SWITCHYARD_LISTEN=127.0.0.1:5020` (a
## SWITCHYARD_REDIS__URL already set in the environment is kept).
DEV_SECRET := target/dev/secret
DEV_ENV = SWITCHYARD_AUTH__HS256_SECRETS="[\"dev-$$(cat $(DEV_SECRET))\"]" \
  SWITCHYARD_REDIS__URL="$${SWITCHYARD_REDIS__URL:-redis://127.0.0.1:$(REDIS_PORT)}"
run: deps redis dev-secret
	$(DEV_ENV) $(CARGO) run --release -- serve --dev

dev-secret:
	@mkdir -p target/dev; [ -s $(DEV_SECRET) ] || \
	  { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > $(DEV_SECRET); chmod 600 $(DEV_SECRET); }

## The whole suite (unit + integration, against real redis-server processes), then the
## node, job (dispatch, outcomes, sessions) and multi-instance scenario suites, and the
## Prometheus scrape of the cell-wide gauges, again on a Sentinel-managed primary + replica
## and on a 3 + 3 Redis Cluster (tests/common/redis_server.rs).
SCENARIO_SUITES := --test nodes --test jobs --test outcomes --test sessions --test instances --test payloads --test prometheus
test: test-deps lint k8s-check
	$(CARGO) test --all-targets -- --test-threads=4
	$(MAKE) --no-print-directory test-topologies

## The scenario suites on Sentinel and on Redis Cluster (part of `make test`; two threads on
## the cluster: six redis-server processes per scenario).
test-topologies: test-deps
	SWITCHYARD_TEST_TOPOLOGY=sentinel $(CARGO) test $(SCENARIO_SUITES) -- --test-threads=4
	SWITCHYARD_TEST_TOPOLOGY=cluster $(CARGO) test $(SCENARIO_SUITES) -- --test-threads=2

## The property-based test of the Lua scripts with many more random operation sequences
## than `make test` runs (32): PROPTEST_CASES=2000 make proptest for a longer hunt.
PROPTEST_CASES ?= 500
proptest: deps
	PROPTEST_CASES=$(PROPTEST_CASES) $(CARGO) test --test proptest_scripts

## Render every kustomization in deploy/kubernetes and validate it against the pinned
## Kubernetes schemas (kubernetes-validate, in a venv under target/). tests/deploy.rs checks
## what schemas cannot: probes, ports, grace period, env names.
K8S_VENV := target/k8s-venv
k8s-check: $(K8S_VENV)/.installed
	$(K8S_VENV)/bin/python deploy/kubernetes/check.py

build:
	$(CARGO) build

release:
	$(CARGO) build --release

## Install what running and testing need (redis-server from Debian packages).
deps:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server"; \
	  $(APT_INSTALL) redis-server >/dev/null; }

## What the tests need beyond `deps`: Prometheus (the metrics test scrapes a live instance),
## a Python venv with kubernetes-validate (k8s-check),
## redis-sentinel (tests/topologies.rs runs a primary + replicas with three sentinels), openssl,
## procps (kill), chromium and its driver (the console's browser test).
test-deps: deps $(K8S_VENV)/.installed
	@command -v openssl >/dev/null 2>&1 || { \
	  echo "installing openssl (tests/redis_tls.rs makes a throw-away CA)"; \
	  $(APT_INSTALL) openssl >/dev/null; }
	@command -v redis-sentinel >/dev/null 2>&1 || { \
	  echo "installing redis-sentinel"; \
	  $(APT_INSTALL) redis-sentinel >/dev/null; }
	@command -v prometheus >/dev/null 2>&1 || { \
	  echo "installing prometheus"; \
	  $(APT_INSTALL) --no-install-recommends prometheus >/dev/null; }
	@[ -x /bin/kill ] || [ -x /usr/bin/kill ] || { \
	  echo "installing procps (kill: the tests stop and resume child processes)"; \
	  $(APT_INSTALL) procps >/dev/null; }
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || { \
	  echo "installing chromium and chromium-driver"; \
	  $(APT_INSTALL) chromium chromium-driver >/dev/null; }

## kubernetes-validate is pinned: it bundles the schemas of every Kubernetes release it knows.
$(K8S_VENV)/.installed:
	@python3 -m venv $(K8S_VENV) 2>/dev/null || { \
	  echo "installing python3-venv"; \
	  $(APT_INSTALL) python3-venv python3-pip >/dev/null; \
	  python3 -m venv $(K8S_VENV); }
	$(K8S_VENV)/bin/pip install -q kubernetes-validate==1.37.0
	@touch $@

## Start a Redis on 127.0.0.1:$(REDIS_PORT) if nothing listens there.
## One that listens must be Redis 7 or newer (the scripts are a Functions library); one this
## starts must answer within 2 s, or its log is shown and `make run` stops there.
redis: deps
	@if redis-cli -p $(REDIS_PORT) ping >/dev/null 2>&1; then \
	  v=$$(redis-cli -p $(REDIS_PORT) info server | sed -n 's/^redis_version:\([0-9]*\).*/\1/p'); \
	  if [ -n "$$v" ] && [ "$$v" -lt 7 ]; then \
	    echo "the Redis on $(REDIS_PORT) is version $$v; Switchyard needs 7.0 or newer (make run REDIS_PORT=...)"; exit 1; fi; \
	  echo "redis already listening on $(REDIS_PORT)"; \
	else \
	  mkdir -p target/redis && \
	  redis-server --port $(REDIS_PORT) --bind 127.0.0.1 --daemonize yes --dir $(CURDIR)/target/redis \
	    --logfile $(CURDIR)/target/redis/redis.log && \
	  for i in 1 2 3 4 5 6 7 8 9 10; do redis-cli -p $(REDIS_PORT) ping >/dev/null 2>&1 && break; sleep 0.2; done; \
	  redis-cli -p $(REDIS_PORT) ping >/dev/null 2>&1 || { \
	    echo "redis did not start on $(REDIS_PORT) (something else listening?); its log:"; \
	    tail -n 20 target/redis/redis.log; exit 1; }; \
	  echo "started redis on $(REDIS_PORT)"; \
	fi

## See it work: two instances (127.0.0.1:5010 and :5011) and ~20 s of simulated lingua
## nodes and web sessions over both (`switchyard sim`); logs in target/demo/.
demo: deps bench-deps redis release
	REDIS_PORT=$(REDIS_PORT) bash bench/demo.sh

## Benchmarks (~5 min; release build, a dedicated redis-server on a free port):
## rewrites docs/benchmarks.md. Not part of `make test`.
bench: deps bench-deps release
	bash bench/run.sh

## Tools the benchmark driver uses besides redis (redis-benchmark comes with redis-tools).
bench-deps:
	@missing=""; for t in jq bc curl redis-benchmark; do \
	  command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing"; \
	  pkgs=$$(echo "$$missing" | sed 's/redis-benchmark/redis-tools/'); \
	  $(APT_INSTALL) $$pkgs >/dev/null; \
	fi

## Fuzz the protocol decoders, the session writer's reassembly and the audio estimate
## (fuzz/, cargo-fuzz + libFuzzer; FUZZ_SECONDS per target, default 30; >= 10 million
## inputs in total; the first build takes ~10 min). Not part of `make test`.
fuzz: fuzz-deps
	bash fuzz/run.sh

fuzz-deps:
	@command -v cargo-fuzz >/dev/null 2>&1 || { echo "installing cargo-fuzz"; $(CARGO) install cargo-fuzz --locked; }

## rustfmt and clippy come with rustup's default profile, not its minimal one.
lint:
	@{ $(CARGO) fmt --version && $(CARGO) clippy --version; } >/dev/null 2>&1 || { \
	  echo "installing rustfmt and clippy"; rustup component add rustfmt clippy; }
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --quiet

fmt:
	$(CARGO) fmt --all

## The effective configuration of `make run` (its development secret and Redis address).
check-config: dev-secret
	@$(DEV_ENV) $(CARGO) run --quiet -- check-config

clean:
	$(CARGO) clean
