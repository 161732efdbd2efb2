"""A client of the agent's local API (docs/ocpp.md): what an OEM's charging stack runs to
hand UpdateFirmware to the agent and to send the agent's statuses to its CSMS.

    client = LocalClient("/run/charger-update/agent.sock")
    status = client.call("update_firmware", request_id=7, location=url,
                         signing_certificate=pem, signature=b64)["status"]
    for entry in client.call("events", wait_s=10)["events"]:
        ...send it to the CSMS...
        client.call("ack", seq=entry["seq"])

Invariant: `call` returns the reply object only when it says ok; a refused request raises
LocalApiError with the agent's error text, an unreachable agent raises LocalApiUnavailable.
Also runnable: `python -m agent.frontends.local_client SOCKET OP [JSON-FIELDS]`.
"""

import json
import socket
import sys
import threading


class LocalApiError(Exception):
    pass


class LocalApiUnavailable(LocalApiError):
    pass


class LocalClient:
    def __init__(self, path, timeout=15.0):  # the agent answers an update within 10 s
        self.path = path
        self.timeout = timeout
        self.sock = None
        self.reader = None
        # One request at a time on the connection: threads sharing a client take turns (a
        # reply read by the wrong thread would leave the other waiting for ever).
        self.lock = threading.Lock()

    def _connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError as e:
            sock.close()
            raise LocalApiUnavailable("agent at %s: %s" % (self.path, e)) from None
        self.sock, self.reader = sock, sock.makefile("rb")

    def call(self, op, **fields):
        """Send {"op": op, **fields}, return the reply. A kept connection the agent closed
        meanwhile (it restarted) is reopened once; a request that got no reply in time is
        never sent again (the agent may have taken it: an update would become two jobs)."""
        with self.lock:
            return self._call(op, fields)

    def _call(self, op, fields):
        fields["op"] = op
        line = json.dumps(fields).encode() + b"\n"
        wait = float(fields.get("wait_s") or 0)
        for attempt in (1, 2):
            reused = self.sock is not None
            if not reused:
                self._connect()
            try:
                self.sock.settimeout(self.timeout + wait)
                self.sock.sendall(line)
                reply = self.reader.readline()
            except socket.timeout:
                self.close()
                raise LocalApiUnavailable(
                    "agent at %s did not answer %s within %ss"
                    % (self.path, op, self.timeout + wait)
                ) from None
            except OSError:
                reply = b""
            if reply:
                break
            self.close()
            if not reused or attempt == 2:
                raise LocalApiUnavailable("agent at %s closed the connection" % self.path)
        try:
            answer = json.loads(reply)
        except (ValueError, RecursionError):
            raise LocalApiError("agent sent a malformed reply to %s" % op) from None
        if not answer.get("ok"):
            raise LocalApiError(answer.get("error") or "refused")
        return answer

    def close(self):
        for closable in (self.reader, self.sock):
            if closable is not None:
                try:
                    closable.close()
                except OSError:
                    pass
        self.sock = self.reader = None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or argv[0] in ("-h", "--help"):
        print("usage: python -m agent.frontends.local_client SOCKET OP [JSON-FIELDS]\n"
              "e.g.   ... /run/charger-update/agent.sock trigger_status")  # fmt: skip
        return 2
    try:
        fields = json.loads(argv[2]) if len(argv) > 2 else {}
    except ValueError as e:
        fields = "not JSON (%s)" % e
    if not isinstance(fields, dict):
        print(
            "error: JSON-FIELDS must be a JSON object, got %s" % str(fields)[:80], file=sys.stderr
        )
        return 2
    try:
        print(json.dumps(LocalClient(argv[0]).call(argv[1], **fields), indent=1, sort_keys=True))
    except LocalApiError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
