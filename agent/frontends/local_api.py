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


class LocalApi:
    """[local_api] socket (path), mode (permission bits, default 0o660)."""

    def __init__(self, cfg, service=None):
        options = cfg.options("local_api", {"socket": DEFAULT_SOCKET, "mode": 0o660})
        self.path = cfg.resolve(options["socket"])
        self.mode = options["mode"]
        self.service = service or FirmwareService(cfg, "local")
        self.server = None

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
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn, conn.makefile("rb") as rfile, conn.makefile("wb") as wfile:
            try:
                self.serve_connection(rfile, wfile)
            except OSError:
                pass  # the client went away

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
        # RecursionError: "[[[[..." nested deeper than the parser recurses (64 KiB allow it).
        except (ValueError, RecursionError):
            return {"ok": False, "error": "request is not JSON"}
        if not isinstance(request, dict):
            return {"ok": False, "error": "request must be a JSON object"}
        op = request.get("op")
        handler = OPS.get(op) if isinstance(op, str) else None  # {"op": []} is no op either
        if handler is None:
            return {"ok": False, "error": "unknown op %r; known: %s"
                    % (request.get("op"), ", ".join(sorted(OPS)))}  # fmt: skip
        try:
            return dict(handler(self.service, request), ok=True)
        except (TypeError, ValueError, KeyError) as e:
            return {"ok": False, "error": "bad %s request: %s" % (request["op"], e)}
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


def _object(request, name):
    value = request[name]
    if not isinstance(value, dict):
        raise ValueError("%s must be an object" % name)
    return value


def _ack(service, r):
    seq = r["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise ValueError("seq must be an integer")
    return {"acked": service.ack(seq, r.get("error"))}


def _ids(service, r):
    status, ids = service.installed_certificate_ids(r.get("certificate_type"))
    return {"status": status, "certificate_hash_data": ids}


OPS = {
    "update_firmware": _update_firmware,
    "allow_installation": lambda s, r: s.allow_installation() or {},
    "boot_reason": lambda s, r: {"boot_reason": s.boot_reason()},
    "boot_notification": lambda s, r: s.boot_notification(
        str(r["status"]), interval=r.get("interval"), csms_time=r.get("csms_time")
    ) or {},
    "events": lambda s, r: {"events": s.events(_wait(r))},
    "ack": _ack,
    "trigger_status": lambda s, r: s.trigger(),
    "install_certificate": lambda s, r: {
        "status": s.install_certificate(r["certificate_type"], r["certificate"])
    },
    "delete_certificate": lambda s, r: {
        "status": s.delete_certificate(_object(r, "certificate_hash_data"))
    },
    "get_installed_certificate_ids": _ids,
}  # fmt: skip
