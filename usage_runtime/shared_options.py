"""The options both command lines take with the same flags and environment variables.

One set of ``NATS_*`` variables configures the shipper and the billing consumer alike;
the logging and metrics options differ only in the prefix of their variables.
"""

from __future__ import annotations

from usage_runtime.options import Option, whole_number

NATS_AUTH_OPTIONS: tuple[Option, ...] = (
    Option("--nats-user", "nats_user", "NATS_USER", "NATS user"),
    Option(
        "--nats-password",
        "nats_password",
        "NATS_PASSWORD",
        "NATS password (prefer the environment)",
        secret=True,
    ),
    Option(
        "--nats-token",
        "nats_token",
        "NATS_TOKEN",
        "NATS token (prefer the environment)",
        secret=True,
    ),
    Option(
        "--nats-nkey-seed",
        "nats_nkey_seed_file",
        "NATS_NKEY_SEED_FILE",
        "file holding an NKey seed",
    ),
    Option(
        "--nats-creds", "nats_creds_file", "NATS_CREDS_FILE", "NATS .creds file (user JWT + seed)"
    ),
    Option(
        "--tls-ca",
        "tls_ca_file",
        "NATS_TLS_CA_FILE",
        "CA file to verify NATS with",
        default="system CAs",
    ),
    Option("--tls-cert", "tls_cert_file", "NATS_TLS_CERT_FILE", "client certificate for NATS"),
    Option("--tls-key", "tls_key_file", "NATS_TLS_KEY_FILE", "key of the client certificate"),
)


def process_options(prefix: str) -> tuple[Option, ...]:
    """Logging and the metrics port, with variables named ``{prefix}_LOG_FORMAT`` etc."""
    return (
        Option("--log-format", "log_format", f"{prefix}_LOG_FORMAT", "text or json"),
        Option("--log-level", "log_level", f"{prefix}_LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR"),
        Option(
            "--metrics-port",
            "metrics_port",
            f"{prefix}_METRICS_PORT",
            "serve /metrics, /healthz and /readyz on this port",
            parse=whole_number,
            default="off; 0 = any free port",
        ),
        Option(
            "--metrics-host",
            "metrics_host",
            f"{prefix}_METRICS_HOST",
            "address the metrics port listens on",
        ),
    )
