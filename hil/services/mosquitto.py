"""A real mosquitto for tests: plain or TLS with client certificates and a per-device ACL.

Plain functions and context managers (no pytest fixtures here) so any test area, the virtual
board and `make demo` can start a broker the same way. Invariant: a Mosquitto returned by
`start()` accepts TCP connections on its 127.0.0.1 port, and `stop()` leaves no process behind.
"""

import contextlib
import datetime
import ipaddress
import os
import pwd
import shutil
import socket
import subprocess
import threading
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hil import lifeline

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
BACKEND_IDENTITY = "backend"  # certificate CN of the operator/backend client


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_accepting(host, port, timeout=10.0, proc=None):
    """Poll-connect until the port accepts; raise RuntimeError on timeout or process exit."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("mosquitto exited with %s before listening" % proc.returncode)
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                msg = "nothing accepts on %s:%s after %ss" % (host, port, timeout)
                raise RuntimeError(msg) from None
            # Polling a local port: a short pause between attempts, not a synchronisation.
            time.sleep(0.02)


# --- PKI -------------------------------------------------------------------------------------


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject_cn, key, issuer_cn, issuer_key, ca=False, server=False):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject_cn))
        .issuer_name(_name(issuer_cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
        builder = builder.add_extension(usage, critical=True)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        builder = builder.add_extension(ski, critical=False)
    else:
        usage = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
        builder = builder.add_extension(usage, critical=True)
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())
        builder = builder.add_extension(aki, critical=False)
        eku = x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server else None
        eku = eku or x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    if server:
        san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_pair(directory, stem, cert, key):
    cert_path = os.path.join(directory, stem + ".crt")
    key_path = os.path.join(directory, stem + ".key")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with open(key_path, "wb") as f:
        f.write(pem)
    os.chmod(key_path, 0o600)
    return cert_path, key_path


class Pki:
    """A test CA on disk; `client(cn)` issues a client certificate, `rogue_client(cn)` one
    from an unrelated CA with the same CN (what an attacker without our CA could present)."""

    def __init__(self, directory):
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self._ca_key = _key()
        ca = _cert("charger-test-ca", self._ca_key, "charger-test-ca", self._ca_key, ca=True)
        self.ca_file, _ = _write_pair(directory, "ca", ca, self._ca_key)
        server_key = _key()
        server = _cert("localhost", server_key, "charger-test-ca", self._ca_key, server=True)
        self.server_cert, self.server_key = _write_pair(directory, "server", server, server_key)
        self._rogue_key = _key()

    def client(self, cn):
        """(cert_file, key_file) for a client whose identity (MQTT username) is `cn`."""
        key = _key()
        cert = _cert(cn, key, "charger-test-ca", self._ca_key)
        return _write_pair(self.directory, "client-" + cn, cert, key)

    def rogue_client(self, cn):
        key = _key()
        cert = _cert(cn, key, "rogue-ca", self._rogue_key)
        return _write_pair(self.directory, "rogue-" + cn, cert, key)

    def server_context(self):
        """An ssl context serving the CA's server certificate (localhost, 127.0.0.1)."""
        import ssl

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server_cert, self.server_key)
        return context

    def tls_settings(self, cn):
        """The `tls` table of the agent's [mqtt] settings for identity `cn`."""
        cert_file, key_file = self.client(cn)
        return {"ca_file": self.ca_file, "cert_file": cert_file, "key_file": key_file}


# --- broker ----------------------------------------------------------------------------------


def acl_text(prefix):
    """Each device reads and writes only below its own {prefix}/{identity}/; the backend
    identity may read and write every device's topics."""
    return (
        "# devices: only their own subtree (%%u is the certificate CN)\n"
        "pattern readwrite %s/%%u/#\n"
        "\n"
        "user %s\n"
        "topic readwrite %s/#\n" % (prefix, BACKEND_IDENTITY, prefix)
    )


class Mosquitto:
    """One mosquitto process (foreground, generated config) on a fixed 127.0.0.1 port."""

    def __init__(
        self,
        directory,
        port=None,
        pki=None,
        prefix="chargers",
        message_limit=0,
        host="127.0.0.1",
        extra_config=(),
        users=None,
    ):
        """users: {name: password}; set, the broker (without pki) takes only those logins."""
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.host = host  # a bench rig listens where its board can reach it
        self.port = port or free_port()
        self.port_given = bool(port)
        self.message_limit = message_limit
        self.pki = pki
        self.prefix = prefix
        self.config_path = os.path.join(directory, "mosquitto.conf")
        self.log_path = os.path.join(directory, "mosquitto.log")
        self.proc = None
        self.guard = None  # lifeline.guard's watcher while the broker runs
        self.extra_config = list(extra_config)  # more mosquitto.conf lines (fleet: queue sizes)
        self.users = users
        self._write_config(message_limit)

    def _write_config(self, message_limit):
        lines = [
            "per_listener_settings false",
            "persistence false",
            "log_dest file %s" % self.log_path,
            "log_type all",
            "set_tcp_nodelay true",  # no Nagle delay on small answer packets
            "user %s" % pwd.getpwuid(os.getuid()).pw_name,  # never drop to 'mosquitto'
            "listener %d %s" % (self.port, self.host),
        ]
        if message_limit:
            lines.append("message_size_limit %d" % message_limit)
        lines += self.extra_config
        if self.pki is None and self.users:
            path = os.path.join(self.directory, "passwords")
            open(path, "w").close()
            for name, password in sorted(self.users.items()):
                subprocess.run(["mosquitto_passwd", "-b", path, name, password], check=True,
                               capture_output=True)  # fmt: skip
            lines += ["password_file %s" % path, "allow_anonymous false"]
        elif self.pki is None:
            lines.append("allow_anonymous true")
        else:
            acl_path = os.path.join(self.directory, "acl")
            with open(acl_path, "w") as f:
                f.write(acl_text(self.prefix))
            lines += [
                "cafile %s" % self.pki.ca_file,
                "certfile %s" % self.pki.server_cert,
                "keyfile %s" % self.pki.server_key,
                "require_certificate true",
                "use_identity_as_username true",
                "allow_anonymous false",
                "acl_file %s" % acl_path,
            ]
        with open(self.config_path, "w") as f:
            f.write("\n".join(lines) + "\n")

    def settings(self, **extra):
        """The [mqtt] settings an MqttChannel needs to reach this broker (plain)."""
        out = {"host": self.host, "port": self.port, "prefix": self.prefix}
        out.update(extra)
        return out

    def start(self, timeout=10.0):
        # The port was free when picked, but another process (another test worker) may bind
        # it first: a port we picked is picked again, and whatever answers must be ours.
        for _ in range(3):
            since = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
            log = open(self.log_path + ".stderr", "ab")
            try:
                self.proc = subprocess.Popen(
                    [MOSQUITTO, "-c", self.config_path], stdout=log, stderr=subprocess.STDOUT
                )
            finally:
                log.close()
            self.guard = lifeline.guard(self.proc.pid)  # a killed test process takes it along
            try:
                wait_accepting(self.host, self.port, timeout, self.proc)
                if self._ours(since, timeout):
                    return self
                error = "another process listens on %s:%d" % (self.host, self.port)
            except RuntimeError as exc:
                error = str(exc)
            self.stop()
            if self.port_given:
                break
            self.port = free_port()
            self._write_config(self.message_limit)
        raise RuntimeError("%s; log: %s" % (error, self.log_tail()))

    def _ours(self, since, timeout):
        """True once our mosquitto has said, since log offset `since`, that it runs ("running"
        comes after every listener is bound); False if it ended first (its port was taken)."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            try:
                with open(self.log_path, "rb") as f:
                    f.seek(since)
                    if b" running" in f.read():
                        return True
            except OSError:
                pass
            time.sleep(0.02)  # polling a local log file, as wait_accepting polls the port
        return False

    def stop(self, timeout=10.0):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self.proc = None
        self._unguard()

    def _unguard(self):
        guard, self.guard = self.guard, None
        lifeline.unguard(guard)

    def kill(self):
        """Power-cut the broker: SIGKILL, no clean shutdown."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            self._unguard()

    def restart(self, timeout=10.0):
        self.stop()
        return self.start(timeout)

    def log_tail(self, n=4000):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""


@contextlib.contextmanager
def mosquitto(directory, tls=False, prefix="chargers", port=None, message_limit=0):
    """Run a broker for the duration of the block; `tls=True` adds a Pki at broker.pki."""
    pki = Pki(os.path.join(directory, "pki")) if tls else None
    broker = Mosquitto(directory, port=port, pki=pki, prefix=prefix, message_limit=message_limit)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


class MessageLog:
    """A handler that records (topic, payload) and lets a test wait for a message it
    expects, on a condition variable (no sleeping)."""

    def __init__(self):
        self.messages = []
        self.errors = []
        self._cond = threading.Condition()

    def __call__(self, topic, payload):
        with self._cond:
            self.messages.append((topic, payload))
            self._cond.notify_all()

    def on_error(self, topic, reason, detail):
        with self._cond:
            self.errors.append((topic, reason, detail))
            self._cond.notify_all()

    def wait_for(self, predicate, timeout=10.0):
        """The first (topic, payload) matching predicate(topic, payload); AssertionError
        with everything seen if none arrives in time."""
        with self._cond:
            found = []

            def match():
                found[:] = [m for m in self.messages if predicate(*m)]
                return bool(found)

            if not self._cond.wait_for(match, timeout):
                raise AssertionError(
                    "no matching message in %ss; seen %r" % (timeout, self.messages)
                )
            return found[0]

    def wait_error(self, reason, timeout=10.0):
        with self._cond:
            if not self._cond.wait_for(lambda: any(e[1] == reason for e in self.errors), timeout):
                raise AssertionError("no %s error in %ss; seen %r" % (reason, timeout, self.errors))
            return [e for e in self.errors if e[1] == reason][0]
