"""One Kafka connection at start that says why a secured cluster refuses us.

aiokafka's clients log a refused SASL login or an untrusted certificate at ERROR and then fail with a
bare "Unable to bootstrap"; the cause is not in the exception. This check opens one connection the way
the clients will, before any of them starts, and turns those two causes into a ConfigError naming the
variable to fix.
"""

import ssl

from aiokafka.conn import create_conn
from aiokafka.errors import AuthenticationFailedError, KafkaError, SaslAuthenticationFailed

from rankstream.stream.errors import ConfigError
from rankstream.stream.settings import Settings

_TIMEOUT_MS = 10_000


async def check_kafka(settings: Settings) -> None:
    """Connect to the first bootstrap server with the settings' TLS and SASL options, then disconnect.

    Raises:
        ConfigError: the broker's certificate is not trusted, or it refused the SASL login.

    Any other failure (down, unreachable) is left to the clients, whose retries and errors apply as before.
    """
    options = settings.kafka_client_options()
    protocol = options.get("security_protocol", "PLAINTEXT")
    if protocol == "PLAINTEXT":
        return  # nothing to refuse: no certificate, no login
    host, _, port = str(options["bootstrap_servers"]).split(",")[0].strip().rpartition(":")
    try:
        conn = await create_conn(
            host,
            int(port),
            request_timeout_ms=_TIMEOUT_MS,
            ssl_context=options.get("ssl_context"),
            security_protocol=protocol,
            sasl_mechanism=options.get("sasl_mechanism"),
            sasl_plain_username=options.get("sasl_plain_username"),
            sasl_plain_password=options.get("sasl_plain_password"),
        )
    except ssl.SSLCertVerificationError as exc:
        raise ConfigError(
            f"Kafka's TLS certificate is not trusted ({exc.verify_message}): set RANKSTREAM_KAFKA_SSL_CAFILE "
            "to the CA that signed the broker's certificate"
        ) from exc
    except (SaslAuthenticationFailed, AuthenticationFailedError) as exc:
        raise ConfigError(
            f"Kafka refused the SASL login of user {options.get('sasl_plain_username')!r} "
            f"({options.get('sasl_mechanism')}): check RANKSTREAM_KAFKA_SASL_USERNAME and "
            "RANKSTREAM_KAFKA_SASL_PASSWORD"
        ) from exc
    except (OSError, KafkaError, TimeoutError):
        return
    conn.close()
