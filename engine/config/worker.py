"""Whole-worker checks of the merged settings: Kafka bootstrap servers when Kafka is used,
the HTTP token off loopback, secrets taken from the environment, the state store URL."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import SecretStr

from headrace.engine.config.files import Issues, Merged
from headrace.engine.config.schema import SECRET_KEY, field_path

TOKEN_VARIABLE = "HEADRACE_TOKEN"
"""The API token's environment variable: when set, it is the token, whatever the files say."""

UNUSED_TOKEN_VARIABLES = ("HEADRACE_HTTP_TOKEN", "HEADRACE_API_TOKEN")
"""Names people reach for that nothing reads: warn when they are set."""


def apply_token_variable(merged: Merged, environ: Mapping[str, str]) -> list[str]:
    """Make ``HEADRACE_TOKEN`` the API token when it is set; return warnings to log at start
    (a token variable that is set but unused, a file token it overrides)."""
    notices: list[str] = []
    http = merged.worker.http
    file = merged.worker_file or (merged.files[0].file if merged.files else "<config>")
    value = environ.get(TOKEN_VARIABLE, "")
    for name in UNUSED_TOKEN_VARIABLES:
        if environ.get(name):
            notices.append(f"{name} is set but nothing reads it: the API token is {TOKEN_VARIABLE}")
    if not value:
        return notices
    if not http.enabled:
        notices.append(f"{TOKEN_VARIABLE} is set but unused: worker.http.enabled is false")
    current = http.token.get_secret_value() if http.token else ""
    if current and current != value:
        notices.append(f"{TOKEN_VARIABLE} overrides worker.http.token of {file}")
    http.token = SecretStr(value)
    merged.from_env.setdefault(file, set()).add("worker.http.token")
    return notices


def check_worker(merged: Merged, loaded_needs_kafka: bool, issues: Issues) -> None:
    worker = merged.worker
    file = merged.worker_file or (merged.files[0].file if merged.files else "<config>")
    env_fields = merged.from_env.get(file, set())
    if loaded_needs_kafka and not worker.bootstrap_servers:
        issues.add(
            file,
            "worker.bootstrap_servers",
            "required: accumulators read Kafka topics "
            'or sinks write to Kafka; e.g. bootstrap_servers = "${KAFKA_BOOTSTRAP_SERVERS}"',
        )
    token = worker.http.token.get_secret_value() if worker.http.token else ""
    if worker.http.enabled and not worker.http.is_loopback and not token:
        issues.add(
            file,
            "worker.http.token",
            f"required when worker.http.host "
            f"({worker.http.host}) is not a loopback address: set {TOKEN_VARIABLE}",
        )
    if worker.http.enabled and not worker.http.is_loopback and worker.http.allow_unauthenticated:
        issues.add(
            file,
            "worker.http.allow_unauthenticated",
            f"only allowed on a loopback host, not {worker.http.host}",
        )
    if token and "worker.http.token" not in env_fields:
        issues.add(
            file,
            "worker.http.token",
            "secrets must come from the environment, not the "
            'file: write token = "${HEADRACE_TOKEN}"',
        )
    for section in ("kafka", "consumer", "producer"):
        for key, value in getattr(worker, section).items():
            path = field_path("worker", section, key)
            if isinstance(value, SecretStr) and value.get_secret_value() and path not in env_fields:
                issues.add(
                    file,
                    path,
                    "secrets must come from the environment, not the file: "
                    f'write "{key}" = "${{VAR}}"',
                )
    if worker.state_store.enabled:
        try:
            from sqlalchemy.engine import make_url

            url = make_url(worker.state_store.url)
        except Exception as error:
            issues.add(file, "worker.state_store.url", f"not a database URL: {error}")
        else:
            if url.get_backend_name() not in ("sqlite", "postgresql"):
                issues.add(
                    file,
                    "worker.state_store.url",
                    f"unsupported database {url.get_backend_name()!r}: use sqlite:///FILE or "
                    "postgresql+psycopg://USER:${PASSWORD}@HOST/DB",
                )
            if url.password and "worker.state_store.url" not in env_fields:
                issues.add(
                    file,
                    "worker.state_store.url",
                    "the URL holds a password: take it "
                    'from the environment, e.g. url = "${HEADRACE_STATE_STORE_URL}"',
                )
    for parsed in merged.files:
        for name, (sink_file, sink) in merged.entries["sinks"].items():
            if sink_file != parsed.file:
                continue
            for key, value in sink.producer.items():
                path = field_path("sinks", name, "producer", key)
                if (
                    SECRET_KEY.search(key)
                    and isinstance(value, SecretStr)
                    and value.get_secret_value()
                    and path not in parsed.from_env
                ):
                    issues.add(
                        parsed.file,
                        path,
                        "secrets must come from the environment, not "
                        f'the file: write "{key}" = "${{VAR}}"',
                    )
