pytest_plugins = ["tests.fixtures.kafka_broker", "tests.fixtures.postgres_server"]
