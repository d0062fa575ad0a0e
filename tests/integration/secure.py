"""Secured local services for the security tests, each in a temp dir on free loopback ports:
a throwaway CA and server certificate, redis-server with ACL users and TLS only, and a Kafka broker
whose only client listener is SASL_SSL with SCRAM-SHA-512. Also `rankstream` processes run against them,
with everything they print kept for the secrets check.

Started with the project's own starters (rankstream.deploy.kafka_local / redis_local). Certificates,
keys and passwords are made here, live under the temp dir, and are never committed.
"""

import asyncio
import os
import secrets
import signal
import subprocess
import sys
from asyncio.subprocess import PIPE
from dataclasses import dataclass
from pathlib import Path

from rankstream.deploy import kafka_local, redis_local
from rankstream.deploy.probe import free_port
from rankstream.stream.settings import Settings

USER = "rankstream"
BROKER_USER = "broker"  # the broker's own SCRAM user, for its inter-broker connections
MECHANISM = "SCRAM-SHA-512"
READY_S = 90.0


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr}")


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA: (certificate, key)."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
        "-keyout", str(key), "-out", str(cert),
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip
    return cert, key


@dataclass(frozen=True)
class Tls:
    """A CA and a server certificate it signed, valid for localhost and 127.0.0.1."""

    ca: Path
    cert: Path
    key: Path  # unencrypted PKCS#8 PEM, as both Redis and Kafka's PEM keystore read it

    @property
    def keystore(self) -> Path:
        """Key and certificate in one PEM file: Kafka's `ssl.keystore.type=PEM` reads it, no keytool."""
        return self.key.parent / "keystore.pem"


def make_tls(folder: Path) -> Tls:
    ca, ca_key = make_ca(folder, "test-ca")
    cert, key, csr = folder / "server.pem", folder / "server.key", folder / "server.csr"
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(csr),
             cwd=folder)  # fmt: skip
    # Authority and subject key ids: Python's strict verification wants them on a CA-signed certificate.
    (folder / "server.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
    )
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-days", "2",
        "-extfile", "server.ext", "-out", str(cert),
        cwd=folder,
    )  # fmt: skip
    tls = Tls(ca, cert, key)
    tls.keystore.write_text(key.read_text() + cert.read_text())
    for private in (key, ca_key, tls.keystore):
        private.chmod(0o600)
    return tls


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass(frozen=True)
class SecureRedis:
    """redis-server with TLS only (no plain port) and the `default` user off: only USER gets in."""

    url: str
    password: str
    process: subprocess.Popen


def start_redis(folder: Path, tls: Tls) -> SecureRedis:
    folder.mkdir(parents=True, exist_ok=True)
    port, password = free_port(), secrets.token_hex(16)
    conf = folder / "redis.conf"
    conf.write_text(
        f"tls-port {port}\ntls-cert-file {tls.cert}\ntls-key-file {tls.key}\ntls-ca-cert-file {tls.ca}\n"
        "tls-auth-clients no\n"  # clients prove who they are with AUTH, not with a certificate
        "user default off\n"
        f"user {USER} on >{password} ~* &* +@all\n"
    )
    conf.chmod(0o600)
    argv = redis_local.server_argv(0, folder, config=conf)  # port 0: no plain-text port at all
    with (folder / "redis.out").open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=folder)
    url = f"rediss://127.0.0.1:{port}/0"
    try:
        redis_local.wait_ready(
            url, READY_S, lambda: proc.poll() is None, username=USER, password=password, ssl_ca_certs=str(tls.ca)
        )
    except BaseException:
        _stop(proc)
        raise
    return SecureRedis(url, password, proc)


@dataclass(frozen=True)
class SecureKafka:
    """A KRaft broker whose client and inter-broker listener is SASL_SSL (SCRAM-SHA-512)."""

    bootstrap: str
    password: str
    broker_password: str
    process: subprocess.Popen


def _kafka_properties(port: int, controller_port: int, tls: Tls, broker_password: str) -> dict[str, str]:
    jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{BROKER_USER}" password="{broker_password}";'
    )
    return {
        # The controller listener stays PLAINTEXT on loopback: only the broker in the same JVM uses it.
        "listeners": f"SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"SASL_SSL://127.0.0.1:{port}",
        "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "SASL_SSL",
        "sasl.enabled.mechanisms": MECHANISM,
        "sasl.mechanism.inter.broker.protocol": MECHANISM,
        f"listener.name.sasl_ssl.{MECHANISM.lower()}.sasl.jaas.config": jaas,
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(tls.keystore),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(tls.ca),
        "ssl.client.auth": "none",
    }


def start_kafka(folder: Path, tls: Tls) -> SecureKafka:
    libs = kafka_local.ensure_kafka_jars()
    port, controller_port = free_port(), free_port()
    password, broker_password = secrets.token_hex(16), secrets.token_hex(16)
    config = kafka_local.write_config(
        folder, port, controller_port, _kafka_properties(port, controller_port, tls, broker_password)
    )
    config.chmod(0o600)
    # SCRAM users live in the cluster metadata: created here, at format time, before the broker starts.
    scram = [
        f"{MECHANISM}=[name={name},password={secret}]"
        for name, secret in ((USER, password), (BROKER_USER, broker_password))
    ]
    kafka_local.format_storage(
        libs, folder, config, kafka_local.new_cluster_id(), [arg for s in scram for arg in ("--add-scram", s)]
    )
    with (folder / "kafka.out").open("ab") as out:
        proc = subprocess.Popen(
            kafka_local.broker_argv(libs, folder, config), stdout=out, stderr=subprocess.STDOUT, cwd=folder
        )
    bootstrap = f"127.0.0.1:{port}"
    try:
        options = client_settings(bootstrap, password, tls.ca).kafka_client_options()
        kafka_local.wait_ready(bootstrap, READY_S, lambda: proc.poll() is None, **options)
    except BaseException:
        _stop(proc)
        raise
    return SecureKafka(bootstrap, password, broker_password, proc)


def client_settings(bootstrap: str, password: str, ca: Path) -> Settings:
    """Kafka-only settings, for probing the broker before the whole stack exists."""
    return Settings(
        kafka_bootstrap=bootstrap,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism=MECHANISM,
        kafka_sasl_username=USER,
        kafka_sasl_password=password,
        kafka_ssl_cafile=ca,
    )


@dataclass(frozen=True)
class SecureStack:
    """ACL + TLS Redis and SASL_SSL Kafka with the CA that signed both, plus a CA that signed neither."""

    redis: SecureRedis
    kafka: SecureKafka
    tls: Tls
    stranger_ca: Path

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def variables(self) -> dict[str, str]:
        """The RANKSTREAM_* variables that reach this stack, as an operator sets them."""
        return {
            "RANKSTREAM_KAFKA_BOOTSTRAP": self.kafka.bootstrap,
            "RANKSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "RANKSTREAM_KAFKA_SASL_MECHANISM": MECHANISM,
            "RANKSTREAM_KAFKA_SASL_USERNAME": USER,
            "RANKSTREAM_KAFKA_SASL_PASSWORD": self.kafka.password,
            "RANKSTREAM_KAFKA_SSL_CAFILE": str(self.tls.ca),
            "RANKSTREAM_REDIS_URL": self.redis.url,
            "RANKSTREAM_REDIS_USERNAME": USER,
            "RANKSTREAM_REDIS_PASSWORD": self.redis.password,
            "RANKSTREAM_REDIS_SSL_CA": str(self.tls.ca),
        }

    def env(self, **overrides: str) -> dict[str, str]:
        """A process environment on this stack: this one's, the stack's variables, then `overrides`."""
        return {**os.environ, **self.variables(), **overrides}

    def settings(self, **overrides: object) -> Settings:
        """The same as `variables`, as a Settings object for code run inside the test process."""
        values: dict[str, object] = {k.removeprefix("RANKSTREAM_").lower(): v for k, v in self.variables().items()}
        return Settings(**(values | overrides))

    def secrets(self) -> dict[str, str]:
        """Every secret string that must never show up in a log, a metric or a manifest."""
        found = {
            "redis password": self.redis.password,
            "kafka password": self.kafka.password,
            "kafka broker password": self.kafka.broker_password,
        }
        # Any base64 line of the server's or the CA's private key; the PEM header is checked too.
        for key in (self.tls.key, self.tls.ca.with_suffix(".key")):
            for i, line in enumerate(key.read_text().splitlines()):
                if len(line) >= 40 and "-----" not in line:
                    found[f"{key.name} line {i}"] = line
        found["private key header"] = "PRIVATE KEY-----"
        return found


def start_stack(folder: Path) -> SecureStack:
    tls = make_tls(folder / "tls")
    stranger_ca, _ = make_ca(folder / "stranger", "stranger-ca")
    redis = start_redis(folder / "redis", tls)
    try:
        kafka = start_kafka(folder / "kafka", tls)
    except BaseException:
        _stop(redis.process)
        raise
    return SecureStack(redis, kafka, tls, stranger_ca)


def stop_stack(stack: SecureStack) -> None:
    _stop(stack.kafka.process)
    _stop(stack.redis.process)


@dataclass(frozen=True)
class Run:
    """What one `rankstream` process printed, and how it ended."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


async def run_cli(env: dict[str, str], *args: str, limit_s: float = 300) -> Run:
    """`rankstream ARGS` as its own process, as an operator runs it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rankstream.cli", *args, env=env, stdout=PIPE, stderr=PIPE
    )
    async with asyncio.timeout(limit_s):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return Run(args, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


class Serving:
    """`rankstream serve` as its own process, stdout and stderr kept in files (read while it runs)."""

    def __init__(self, env: dict[str, str], folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.stdout, self.stderr = folder / "serve.out", folder / "serve.err"
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "rankstream.cli", "serve"], env=env, stdout=out, stderr=err
            )

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")

    def check_running(self) -> None:
        """Fail with the end of the scorer's log, so a crash says why."""
        if self.process.poll() is not None:
            tail = "\n".join(self.log().splitlines()[-40:])
            raise AssertionError(f"scorer exited with {self.process.returncode}; its log ends:\n{tail}")

    def stop(self) -> Run:
        """SIGTERM (the scorer drains and commits), wait, and return what it printed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        out = self.stdout.read_text(errors="replace")
        return Run(("serve",), self.process.returncode, out, self.log())
