"""Secure by default: credentials from a file or the environment, TLS that verifies the broker,
client certificates. Against a real mosquitto with a TLS listener and a password file, and
certificates made by openssl for this test."""

from __future__ import annotations

import logging
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from hassim import Broker, needs_mosquitto
from helpers import wait_for

from iotrt.nodes.action.actuator import DriverError
from iotrt.nodes.action.homeassistant import SPEC, broker_config, read_secret
from iotrt.nodes.action.mqttlink import BrokerConfig, MqttLink, make_client

OPENSSL = shutil.which("openssl")
PASSWD = shutil.which("mosquitto_passwd")


def params(**kw) -> dict:
    return SPEC.validate_params({"host": "127.0.0.1", **kw})


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for localhost/127.0.0.1, a client certificate, and a second
    CA that signed nothing of ours."""
    if OPENSSL is None:
        pytest.skip("openssl is not installed (.ci/run installs it)")
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                f"/CN=test {ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.crt", cwd=d)
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, cn in (("server", "localhost"), ("client", "door")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-out", f"{name}.crt",
                *(["-extfile", "san.ext"] if name == "server" else []), cwd=d)
    return d


def tls_broker(tmp_path, pki, client_certs: bool) -> Broker:
    if PASSWD is None:
        pytest.skip("mosquitto_passwd is not installed (it comes with mosquitto)")
    pw = tmp_path / "passwd"
    subprocess.run([PASSWD, "-c", "-b", str(pw), "door", "s3cret"], check=True,
                   capture_output=True)
    return Broker(tmp_path, extra=(
        f"allow_anonymous false\npassword_file {pw}\ncafile {pki / 'ca.crt'}\n"
        f"certfile {pki / 'server.crt'}\nkeyfile {pki / 'server.key'}\n"
        f"require_certificate {'true' if client_certs else 'false'}\n"))


def connect_now(cfg: BrokerConfig) -> None:
    """A synchronous connect: raises on a TLS failure, returns after CONNACK."""
    client = make_client(cfg)
    result = []
    client.on_connect = lambda c, u, f, rc, p: result.append(("connect", rc))
    # with TLS 1.3 a refused client certificate shows only after the handshake: the broker
    # closes the connection instead of answering
    client.on_disconnect = lambda c, u, f, rc, p: result.append(("disconnect", rc))
    try:
        client.connect(cfg.host, cfg.port, keepalive=5)
        client.loop_start()
        wait_for(lambda: result, 10, "CONNACK or a disconnect")
    finally:
        client.loop_stop()
        client.disconnect()
    what, rc = result[0]
    if what == "disconnect" or rc.is_failure:
        raise ConnectionRefusedError(f"{what}: {rc}")


def cfg(broker, pki, **kw) -> BrokerConfig:
    return BrokerConfig(**{"host": "localhost", "port": broker.port, "tls": True,
                           "ca_file": str(pki / "ca.crt"), "username": "door",
                           "password": "s3cret", **kw})


@needs_mosquitto
def test_tls_verifies_the_broker_and_the_password(tmp_path, pki):
    broker = tls_broker(tmp_path, pki, client_certs=False)
    try:
        connect_now(cfg(broker, pki))
        with pytest.raises(ssl.SSLCertVerificationError):
            connect_now(cfg(broker, pki, ca_file=str(pki / "other-ca.crt")))
        with pytest.raises(ConnectionRefusedError):
            connect_now(cfg(broker, pki, password="guess"))
        with pytest.raises(ConnectionRefusedError):
            connect_now(cfg(broker, pki, username="", password=""))
        # the bridge's own link: connects, and says why when the broker refuses it
        link = MqttLink(cfg(broker, pki), will_topic="t/status")
        link.start()
        try:
            assert link.connected.wait(10)
        finally:
            link.close()
    finally:
        broker.kill()


@needs_mosquitto
def test_client_certificates(tmp_path, pki, caplog):
    broker = tls_broker(tmp_path, pki, client_certs=True)
    try:
        connect_now(cfg(broker, pki, cert_file=str(pki / "client.crt"),
                        key_file=str(pki / "client.key")))
        with pytest.raises((ssl.SSLError, OSError)):
            connect_now(cfg(broker, pki))           # no client certificate: the broker refuses
        with pytest.raises(DriverError, match="TLS setup"):
            make_client(cfg(broker, pki, cert_file=str(tmp_path / "missing.crt")))
    finally:
        broker.kill()


def test_tls_is_on_by_default_except_on_this_machine(monkeypatch):
    assert broker_config(params(), "d").tls is False
    assert broker_config(params(host="localhost"), "d").tls is False
    remote = broker_config(params(host="broker.example"), "d")
    assert (remote.tls, remote.port) == (True, 8883)
    assert broker_config(params(host="broker.example", tls=False), "d").port == 1883
    assert broker_config(params(), "door").client_id == "iotrt-door"


def test_secrets_come_from_the_environment_or_a_file(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("DOOR_MQTT_PW", "from-env")
    assert broker_config(params(password_env="DOOR_MQTT_PW"), "d").password == "from-env"
    with pytest.raises(DriverError, match=r"\$NOT_SET_ANYWHERE"):
        read_secret(params(password_env="NOT_SET_ANYWHERE"), "password_env", "password_file")
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    secret.chmod(0o644)
    log = logging.getLogger("t")
    with caplog.at_level(logging.WARNING):
        assert read_secret(params(password_file=str(secret)), "password_env", "password_file",
                           log) == "from-file"
    assert "readable by other users" in caplog.text
    with pytest.raises(DriverError, match="not both"):
        read_secret(params(password_file=str(secret), password_env="DOOR_MQTT_PW"),
                    "password_env", "password_file")
    with pytest.raises(DriverError, match="cannot read"):
        read_secret(params(code_file=str(tmp_path / "nope")), "code_env", "code_file")
