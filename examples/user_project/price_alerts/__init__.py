"""Price alerts: a sample Headrace user project."""
