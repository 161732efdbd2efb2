"""TLS for the board's two links (MQTT and https downloads), on MicroPython's `tls` (mbedtls).

The server's certificate is always verified against the CA the board was provisioned with, and
its name against the host the board dialled: a board has no system CA store, so a TLS link
without `ca_file` is a configuration error, never an unverified connection. A client
certificate (`cert_file` and `key_file`, PEM or DER) is presented when configured, which is how
a charger usually logs in to its broker (docs/micropython.md, "TLS").

Imported only when a link uses TLS: a board on plain MQTT does not pay its heap.

Invariant: `context` returns a verifying context or raises ConfigError (the board's files are
wrong: retrying does not help); `wrap` returns a verified TLS socket, its whole handshake done
within `handshake_s` (`wrap_lazy` one whose first write verifies), or raises NetworkError
(the server, or whoever answered, did not prove who it is or did not finish in time:
transient, as on the Linux agent).
"""

# MicroPython's C module under `ssl` (1.23+): its contexts are C objects, so one made in a
# phase outlives the phase's modules (agent/mpy/phase.py), and no Python module stays on the heap.
import tls

from agent.core.errors import ConfigError, NetworkError


def blocks(path, what):
    """[(label, DER)] of the PEM file at `path` ("CERTIFICATE", "PRIVATE KEY", ...), or
    [(None, bytes)] for a DER file: mbedtls on MicroPython takes DER only."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError("%s %r cannot be read (%s): provision the board's PEM file there"
                          % (what, path, e))  # fmt: skip
    if b"-----BEGIN" not in data:
        return [(None, data)]
    import binascii

    out, label, body = [], None, []
    for line in data.split(b"\n"):
        line = line.strip()
        if line.startswith(b"-----BEGIN "):
            label, body = line[11:].rstrip(b"-").decode(), []
        elif line.startswith(b"-----END"):
            try:
                out.append((label, binascii.a2b_base64(b"".join(body))))
            except ValueError:
                raise ConfigError("%s %r is not valid PEM" % (what, path))
            label = None
        elif label is not None:
            body.append(line)
    return out


def _first(path, what, suffix):
    for label, data in blocks(path, what):
        if label is None or label.endswith(suffix):
            return data
    raise ConfigError("%s %r holds no %s" % (what, path, suffix))


def context(settings, where):
    """A client context that verifies servers against every certificate in `settings`'
    ca_file (a bundle: two CAs while one is rotated) and presents its cert_file and key_file
    when both are set; `where` names the settings in errors. About 3 KiB of heap in one
    piece, which is why the agent makes one per link and keeps it."""
    ca_file = settings.get("ca_file")
    if not ca_file:
        raise ConfigError("%s ca_file is not set: the board has no system CA store, so TLS "
                          "cannot be verified (it is never turned off); provision the CA that "
                          "signed the server's certificate" % where)  # fmt: skip
    handshake_s = settings.get("handshake_s", 1)
    if type(handshake_s) not in (int, float) or not 1 <= handshake_s <= 600:
        raise ConfigError("%s handshake_s must be a number of seconds from 1 to 600, not %r"
                          % (where, handshake_s))  # fmt: skip
    cert_file, key_file = settings.get("cert_file"), settings.get("key_file")
    if bool(cert_file) != bool(key_file):
        raise ConfigError("%s needs both cert_file and key_file for a client certificate"
                          % where)  # fmt: skip
    ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = tls.CERT_REQUIRED
    what, path = where + " ca_file", ca_file
    try:
        cas = [d for label, d in blocks(ca_file, what) if label in (None, "CERTIFICATE")]
        if not cas:
            raise ConfigError("%s %r holds no CERTIFICATE" % (what, ca_file))
        for data in cas:
            ctx.load_verify_locations(data)
        if cert_file:
            what, path = where + " cert_file/key_file", cert_file
            ctx.load_cert_chain(_first(cert_file, where + " cert_file", "CERTIFICATE"),
                                _first(key_file, where + " key_file", "PRIVATE KEY"))  # fmt: skip
    except ValueError as e:
        raise ConfigError("%s %r is not a usable certificate or key (%s)"
                          % (what, path, str(e).strip()))  # fmt: skip
    return ctx


def untrusted(host, error):
    """The NetworkError for mbedtls's ValueError: the verification result, as text."""
    return NetworkError("TLS certificate of %s not trusted: %s" % (host, str(error).strip()))


def wrap(ctx, sock, host, timeout_s, handshake_s):
    """`sock` (connected) wrapped by `ctx` for `host`, the server's certificate and name
    verified; the handshake done within `handshake_s` in all (each wait at most `timeout_s`),
    the socket not blocking afterwards."""
    from agent.mpy.tlsio import Bounded

    bio = Bounded(sock, timeout_s, handshake_s)
    sock.setblocking(False)
    try:
        wrapped = ctx.wrap_socket(bio, server_hostname=host)
    except ValueError as e:
        raise untrusted(host, e)
    except OSError:
        if bio.timed_out:
            raise NetworkError("TLS handshake with %s not done within %s s (or %s s of silence)"
                               % (host, handshake_s, timeout_s))  # fmt: skip
        raise
    bio.until = None
    return wrapped


def wrap_lazy(ctx, sock, host):
    """`sock` (connected, not blocking) wrapped by `ctx` for `host`, the handshake left to
    the first write (agent/mpy/http.py drives it, bounded, without blocking); a certificate
    that does not verify raises ValueError from that write."""
    return ctx.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)


class Umqtt:
    """What umqtt.simple2 imports as `ussl` (MicroPython 1.22 dropped that name): its
    connect() hands us the raw socket; we wrap it with the channel's context, the handshake
    bounded in all by `handshake_s` and each wait by umqtt's own socket timeout. umqtt needs
    the handshake done before its first write, so it still holds the board's loop, but for
    `handshake_s` at most."""

    def __init__(self, ctx, timeout_s, handshake_s):
        self.ctx, self.timeout_s, self.handshake_s = ctx, timeout_s, handshake_s

    def wrap_socket(self, sock, server_hostname=None):
        return wrap(self.ctx, sock, server_hostname, self.timeout_s, self.handshake_s)
