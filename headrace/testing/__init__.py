"""Testing toolkit for Headrace users: pytest fixtures, brokers, workers, graph helpers."""
