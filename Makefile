# Headrace developer entry points. `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-fast lint format bench bench-eos bench-peers bench-keyed kafka-up kafka-down postgres-up postgres-down clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# A real worker (`headrace run examples/price_signal.toml`) against a local Kafka broker:
# starts the broker, produces order books, shows the signals and health, stops everything.
demo: install
	$(BIN)/python -m examples.demo_kafka

# The whole suite logs through the worker's JSON configuration (what `headrace run` uses
# off a terminal), then the tests that log through the engine in this process run again
# with the console configuration; a log line that needs the renderer's fallback fails its
# test (tests/conftest.py, HEADRACE_TEST_LOG_FORMAT). Subprocess workers (`headrace run`,
# worker_app) configure their own logs (JSON), so the console pass leaves them out.
CONSOLE_TESTS ?= tests/unit tests/property tests/integration/test_kafka_sink.py \
	tests/integration/test_kafka_end_to_end.py tests/integration/test_kafka_backpressure.py \
	tests/integration/test_kafka_dead_letter_failures.py \
	tests/integration/test_state_store_postgres.py
test: install lint
	HEADRACE_TEST_LOG_FORMAT=json $(BIN)/pytest -q -p no:cacheprovider
	HEADRACE_TEST_LOG_FORMAT=console $(BIN)/pytest -q -p no:cacheprovider $(CONSOLE_TESTS)

test-fast: install
	$(BIN)/pytest -q -m "not kafka and not postgres and not slow"

# The long black-box chaos soak (>= 20 SIGKILLs, >= 30,000 messages; `make test` runs the
# short one). HEADRACE_SOAK_SEED=N replays a run's chaos plan; the figures are printed.
.PHONY: soak
soak: install
	HEADRACE_SOAK=long $(BIN)/pytest -q -s -p no:cacheprovider tests/integration/test_chaos_soak.py \
		tests/integration/test_kafka_keyed_changelog.py \
		tests/integration/test_kafka_exactly_once.py \
		tests/integration/test_kafka_exactly_once_keyed.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python -m tests.bench.kafka_throughput $(BENCH_ARGS)
	$(BIN)/python -m tests.bench.exactly_once $(EOS_BENCH_ARGS)

# exactly_once against at_least_once: throughput ratio and p99 at two transaction intervals.
bench-eos: install
	$(BIN)/python -m tests.bench.exactly_once $(EOS_BENCH_ARGS)

# Headrace against raw confluent-kafka, Quix Streams, Bytewax and faust-streaming on one
# pipeline and one pre-produced topic; each peer in its own venv under .venv-bench/
# (pins: tests/bench/requirements-peers.txt). BENCH_ARGS="--messages 20000 --runs 3".
bench-peers: install
	$(BIN)/python -m tests.bench.peers $(BENCH_ARGS)

# Keyed latest, 1,000 keys, async graph awaiting 5 ms: max_concurrency 16 vs 1; then the
# restore of 100,000 keys from a changelog topic (starts a local broker unless
# KAFKA_BOOTSTRAP_SERVERS is set).
bench-keyed: install
	$(BIN)/python -m tests.bench.keyed
	$(BIN)/python -m tests.bench.keyed_restore
	$(BIN)/python -m tests.bench.keyed_restore --partitions 4

kafka-up: install
	bash docker/local-kafka/kafka-local.sh fetch
	bash docker/local-kafka/kafka-local.sh start

kafka-down:
	bash docker/local-kafka/kafka-local.sh stop

postgres-up:
	bash docker/local-postgres.sh install
	bash docker/local-postgres.sh start

postgres-down:
	bash docker/local-postgres.sh stop

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
