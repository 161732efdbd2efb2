"""The local API: an OEM's own charging stack (it owns the OCPP connection) drives the agent
over a Unix socket, one JSON object per line each way, like the charging-stack adapter.

Invariant: every request line gets exactly one reply line, {"ok": true, ...} or {"ok": false,
"error": "..."}; a malformed, oversized or unknown request is answered with an error and the
connection stays usable; nothing a client sends reaches the engine except through
FirmwareService (agent/frontends/ocpp/service.py). The protocol is in docs/ocpp.md; a client
is agent/frontends/local_client.py.
"""

import json
import logging
import os
import socket
import threading

from agent.core.errors import ConfigError, NetworkError
from agent.frontends.ocpp.service import FirmwareService

log = logging.getLogger("charger-update")
MAX_LINE = 64 * 1024
DEFAULT_SOCKET = "/run/charger-update/agent.sock"
MAX_WAIT_S = 30.0
MAX_CLIENTS = 16  # a stack needs two or three (its event pump, a request, a trigger)
IDLE_TIMEOUT_S = 300.0  # silent this long: closed (the client reconnects when it needs to)


class LocalApi:
    """[local_api] socket (path), mode (permission bits, default 0o660)."""

    reports_boot = True  # the stack tells its BootNotification result (op boot_notification)

    def __init__(self, cfg, service=None):
        options = cfg.options("local_api", {"socket": DEFAULT_SOCKET, "mode": 0o660})
        self.path = cfg.resolve(options["socket"])
        self.mode = options["mode"]
        self.service = service or FirmwareService(cfg, "local")
        self.server = None
        self.clients = threading.BoundedSemaphore(MAX_CLIENTS)
        self.idle_timeout_s = IDLE_TIMEOUT_S

    # -- the front-end interface (agent/control/frontends.py) --------------------------------

    @property
    def reboot_grace_s(self):
        return self.service.reboot_grace_s

    def start(self, daemon):
        self.service.start(daemon)
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        if os.path.exists(self.path):
            os.unlink(self.path)  # a socket left by a previous run of the agent
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            server.bind(self.path)
            os.chmod(self.path, self.mode)
            server.listen(8)
        except OSError as e:
            server.close()
            raise ConfigError("[local_api] cannot listen on %s: %s" % (self.path, e)) from None
        self.server = server
        # A blocking accept, not a polling loop: an idle agent wakes up for nothing.
        threading.Thread(target=self._accept, args=(server,), name="local-api",
                         daemon=True).start()  # fmt: skip
        log.info("local API on %s", self.path)

    def _accept(self, server):
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return  # stop() closed the socket
            if not self.clients.acquire(blocking=False):
                # A thread per client: a stack leaking connections must not exhaust memory.
                log.warning("local API: more than %d clients; refusing one", MAX_CLIENTS)
                try:
                    conn.sendall(b'{"error": "too many clients", "ok": false}\n')
                except OSError:
                    pass
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        conn.settimeout(self.idle_timeout_s)  # a client that holds a place and says nothing
        try:  # closing the files flushes: a client gone mid-reply fails there too
            with conn, conn.makefile("rb") as rfile, conn.makefile("wb") as wfile:
                self.serve_connection(rfile, wfile)
        except OSError as e:
            log.info("local API client went away: %s", e)
        finally:
            self.clients.release()

    def stop(self):
        server, self.server = self.server, None
        if server is not None:
            try:
                server.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            server.close()

    def status(self, status, info):
        self.service.status(status, info)

    def pending(self):
        return self.service.pending()

    def boot_accepted(self, timeout):
        return self.service.boot_accepted(timeout)

    # -- the protocol -------------------------------------------------------------------------

    def serve_connection(self, rfile, wfile):
        while True:
            line = rfile.readline(MAX_LINE + 1)
            if not line:
                return
            if len(line) > MAX_LINE:
                too_long = "request longer than %d bytes" % MAX_LINE
                self._reply(wfile, {"ok": False, "error": too_long})
                return  # the rest of the line cannot be resynchronised
            self._reply(wfile, self.handle_line(line))

    @staticmethod
    def _reply(wfile, reply):
        wfile.write(json.dumps(reply, sort_keys=True).encode() + b"\n")
        wfile.flush()

    def handle_line(self, line):
        try:
            request = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: nested past the parser's depth
            return {"ok": False, "error": "request is not JSON"}
        if not isinstance(request, dict):
            return {"ok": False, "error": "request must be a JSON object"}
        op = request.get("op")
        handler = OPS.get(op) if isinstance(op, str) else None
        if handler is None:
            return {"ok": False, "error": "unknown op %s; known: %s"
                    % (json.dumps(op)[:60], ", ".join(sorted(OPS)))}  # fmt: skip
        try:
            return dict(handler(self.service, request), ok=True)
        except (TypeError, ValueError, KeyError) as e:
            return {"ok": False, "error": "bad %s request: %s" % (op, e)}
        except NetworkError as e:
            return {"ok": False, "error": e.message}
        except Exception as e:  # a bug must not take the socket down
            log.exception("local API op %s failed", request.get("op"))
            return {"ok": False, "error": "internal error: %r" % e}


def _wait(request):
    value = request.get("wait_s", 0)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise ValueError("wait_s must be a number of seconds")
    return min(float(value), MAX_WAIT_S)


def _update_firmware(service, r):
    fields = ("request_id", "location", "retrieve_at", "install_at", "retries",
              "retry_interval_s", "signing_certificate", "signature", "allow_new_sessions",
              "defer_download_during_transaction")  # fmt: skip
    return {"status": service.update_firmware(dict((k, r.get(k)) for k in fields))}


def _field(r, name, types, required=True):
    """r[name] when it has one of `types` (None when absent and not required); ValueError
    naming the field otherwise, so a stack's bug reads as one clear error line."""
    value = r.get(name)
    if value is None and not required:
        return None
    if value is None:
        raise ValueError("%s is missing" % name)
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        raise ValueError("%s must be %s" % (name, " or ".join(t.__name__ for t in types)))
    return value


def _ack(service, r):
    seq = _field(r, "seq", (int,))
    error = _field(r, "error", (str,), required=False)
    return {"acked": service.ack(seq, error)}


def _boot_notification(service, r):
    service.boot_notification(
        _field(r, "status", (str,)),
        interval=_field(r, "interval", (int,), required=False),
        csms_time=_field(r, "csms_time", (str,), required=False),
    )
    return {}


def _install_certificate(service, r):
    kind, pem = _field(r, "certificate_type", (str,)), _field(r, "certificate", (str,))
    return {"status": service.install_certificate(kind, pem)}


def _delete_certificate(service, r):
    wanted = _field(r, "certificate_hash_data", (dict,))
    for key, value in wanted.items():
        if not isinstance(value, str):
            raise ValueError("certificate_hash_data.%s must be str" % key)
    return {"status": service.delete_certificate(wanted)}


def _ids(service, r):
    kinds = _field(r, "certificate_type", (list,), required=False)
    if kinds is not None and not all(isinstance(k, str) for k in kinds):
        raise ValueError("certificate_type must be a list of str")
    status, ids = service.installed_certificate_ids(kinds)
    return {"status": status, "certificate_hash_data": ids}


OPS = {
    "update_firmware": _update_firmware,
    "allow_installation": lambda s, r: s.allow_installation() or {},
    "boot_reason": lambda s, r: {"boot_reason": s.boot_reason()},
    "boot_notification": _boot_notification,
    "events": lambda s, r: {"events": s.events(_wait(r))},
    "ack": _ack,
    "trigger_status": lambda s, r: s.trigger(),
    "install_certificate": _install_certificate,
    "delete_certificate": _delete_certificate,
    "get_installed_certificate_ids": _ids,
}  # fmt: skip
