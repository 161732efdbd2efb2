"""A tiny backend: answers the agents' comm-check pings and acts as an operator console.

Used by the tests, the virtual board and `make demo`. Invariant: every pong carries exactly
the nonce of the ping it answers, on the pinging device's own pong topic; every status,
inventory, health and online message seen is kept per device, in arrival order.

    # responder + status printer
    python -m agent.frontends.backend_sim --host 127.0.0.1 --port 1883
"""

import argparse
import itertools
import json
import os
import sys
import threading

from agent.frontends import channel as ch
from agent.frontends.mqtt_channel import MqttChannel

IDENTITY = "backend"  # certificate CN / client identity of the backend (see the ACL)


class BackendSim:
    """settings: the same [mqtt] settings as MqttChannel (TLS identity: the backend's)."""

    def __init__(self, settings, client_id=None, on_status=None, answer_pings=True):
        client_id = client_id or "%s-%d-%s" % (IDENTITY, os.getpid(), os.urandom(3).hex())
        self.channel = MqttChannel(settings, IDENTITY, will=False, client_id=client_id)
        self.prefix = self.channel.prefix
        self.on_status = on_status  # on_status(device_id, status) for a live journey print
        self.answer_pings = answer_pings
        self.pings = []  # (device_id, nonce) of every ping seen
        self._seen = {}  # (kind, device_id) -> [payload, ...]
        self._cond = threading.Condition()
        self._seq = itertools.count(1)
        self.channel.subscribe_filter(self._filter(ch.PING), self._on_ping)
        for suffix in (ch.STATUS, ch.INVENTORY, ch.HEALTH, ch.ONLINE):
            self.channel.subscribe_filter(self._filter(suffix), self._on_report)

    def _filter(self, suffix):
        return "%s/+/%s" % (self.prefix, suffix)

    def start(self, timeout=10.0):
        """Connect and wait until every subscription is active."""
        self.channel.connect(timeout)
        if not self.channel.wait_subscribed(timeout):
            raise TimeoutError("backend subscriptions not acknowledged in %ss" % timeout)
        return self

    def stop(self):
        self.channel.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- responder --------------------------------------------------------------------------

    def _on_ping(self, topic, payload):
        device = self.channel.device_of(topic)
        nonce = payload.get("nonce")
        with self._cond:
            self.pings.append((device, nonce))
            self._cond.notify_all()
        if self.answer_pings and device and isinstance(nonce, str):
            self.channel.publish_to(self.channel.topic(ch.PONG, device), {"nonce": nonce})

    def _on_report(self, topic, payload):
        device = self.channel.device_of(topic)
        kind = topic[len("%s/%s/" % (self.prefix, device)) :]
        with self._cond:
            self._seen.setdefault((kind, device), []).append(payload)
            self._cond.notify_all()
        if kind == ch.STATUS and self.on_status is not None:
            self.on_status(device, payload)

    # -- operator console -------------------------------------------------------------------

    def publish_job(self, device_id, job):
        """Send a job (QoS 1, not retained); fills in job_id when missing. Returns the job."""
        job = dict(job)
        job.setdefault("job_id", "job-%d-%s" % (next(self._seq), os.urandom(3).hex()))
        self.channel.publish_to(self.channel.topic(ch.JOB, device_id), job, qos=1, wait_s=10)
        return job

    def cancel_job(self, device_id, job_id):
        self.channel.publish_to(
            self.channel.topic(ch.CANCEL, device_id), {"job_id": job_id}, qos=1, wait_s=10
        )

    def seen(self, kind, device_id):
        """Payloads of `kind` (a topic suffix such as channel.STATUS) from a device."""
        with self._cond:
            return list(self._seen.get((kind, device_id), []))

    def statuses(self, device_id):
        return self.seen(ch.STATUS, device_id)

    def inventory(self, device_id):
        rows = self.seen(ch.INVENTORY, device_id)
        return rows[-1] if rows else None

    def wait_for(self, kind, device_id, predicate, timeout):
        """The first payload of `kind` from the device matching predicate(payload) (or equal
        to the status name when predicate is a str). TimeoutError lists what was seen."""
        if isinstance(predicate, str):
            wanted = predicate
            predicate = lambda p: p.get("status") == wanted  # noqa: E731
        found = []

        def match():
            found[:] = [p for p in self._seen.get((kind, device_id), []) if predicate(p)]
            return bool(found)

        with self._cond:
            if not self._cond.wait_for(match, timeout):
                seen = self._seen.get((kind, device_id), [])
                raise TimeoutError(
                    "no matching %s from %s in %ss; seen: %s" % (kind, device_id, timeout, seen)
                )
            return found[0]

    def wait_status(self, device_id, predicate, timeout):
        return self.wait_for(ch.STATUS, device_id, predicate, timeout)

    def wait_inventory(self, device_id, predicate, timeout):
        return self.wait_for(ch.INVENTORY, device_id, predicate, timeout)

    def wait_ping(self, device_id, timeout):
        with self._cond:
            if not self._cond.wait_for(lambda: any(d == device_id for d, _ in self.pings), timeout):
                raise TimeoutError("no ping from %s in %ss" % (device_id, timeout))


def _print_status(device_id, status):
    print("%s %s" % (device_id, json.dumps(status, sort_keys=True)), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m agent.frontends.backend_sim", description=__doc__
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--prefix", default="chargers")
    parser.add_argument("--protocol", default="5", choices=("5", "3.1.1"))
    parser.add_argument("--ca-file", default="")
    parser.add_argument("--cert-file", default="")
    parser.add_argument("--key-file", default="")
    args = parser.parse_args(argv)
    settings = {"host": args.host, "port": args.port, "prefix": args.prefix}
    settings["protocol"] = args.protocol
    if args.cert_file or args.ca_file:
        settings["tls"] = {
            "ca_file": args.ca_file,
            "cert_file": args.cert_file,
            "key_file": args.key_file,
        }
    backend = BackendSim(settings, on_status=_print_status).start()
    print("backend responder on %s:%d (prefix %s)" % (args.host, args.port, args.prefix))
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        backend.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
