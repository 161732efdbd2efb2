"""The charging stack's line to the update agent (the agent's local API, docs/ocpp.md): the
reference integration for an OEM stack that owns the OCPP connection.

UpdateFirmware and the certificate operations are handed to the agent as they come; the
agent's statuses and security events come back through `events` and are sent to the CSMS in
order, each acknowledged only after the CSMS answered (a CALLERROR counts as answered: it is
logged by the agent, never retried). Every call opens its own connection except the pump's,
so the OCPP loop's threads never share a socket.
"""

import time

from agent.frontends.local_client import LocalApiError, LocalClient


class Bridge:
    def __init__(self, socket_path, log):
        self.path = socket_path
        self.log = log
        self.pump_client = LocalClient(socket_path)

    def call(self, op, **fields):
        client = LocalClient(self.path)
        try:
            return client.call(op, **fields)
        finally:
            client.close()

    def boot_reason(self, wait_s=15.0):
        """The agent's word on why this boot happened (FirmwareUpdate after its reboot), or
        None; waits for the agent to come up, at most `wait_s`."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return self.call("boot_reason").get("boot_reason")
            except LocalApiError as e:
                if time.monotonic() > deadline:
                    self.log("agent not reachable for the boot reason (%s)" % e)
                    return None
            time.sleep(0.1)  # the agent is still starting

    def safe(self, op, default=None, **fields):
        try:
            return self.call(op, **fields)
        except LocalApiError as e:
            self.log("agent: %s failed: %s" % (op, e))
            return default

    def events(self, wait_s):
        try:
            return self.pump_client.call("events", wait_s=wait_s)["events"]
        except LocalApiError as e:
            self.log("agent events: %s" % e)
            time.sleep(min(wait_s, 1.0))
            return []

    def ack(self, seq, error=None):
        try:
            self.pump_client.call("ack", seq=seq, error=error)
        except LocalApiError as e:
            self.log("agent ack %s: %s" % (seq, e))
