"""A virtual board whose charging stack owns its OCPP connection, and a CSMS that drives it.

One board per protocol and test module: the conformance cases run one after the other on it,
like the OCA's test tool runs them on one station, each leaving the station idle; real
reboots, real slots. `Conformance` is the CSMS operator's side: it sends requests and reads
what the station reported since the case began.
"""

import datetime

import pytest

from hil.virtual.rig import VirtualRig

FINAL = ("Installed", "InstallationFailed", "InstallVerificationFailed", "InvalidSignature",
         "DownloadFailed")  # fmt: skip
T = 60
# These cases are about OCPP, not the alarm check: watch the alarm profile for 1 s, not 3.
QUICK_TRIAL = {"trial": {"alarms": {"observe_s": 1}}}


def iso(offset_s=0):
    when = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=offset_s)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


class Conformance:
    """What a test case sends (as the CSMS) and what it checks, for one protocol."""

    def __init__(self, rig, protocol):
        self.rig, self.csms, self.protocol = rig, rig.csms, protocol
        self.station = rig.device_id
        self.versions = 0
        self.mark = 0

    def begin(self):
        """A new case: records from now on are this case's."""
        self.mark = len(self.csms.timeline)

    def release(self, defects=(), **kw):
        self.versions += 1
        return self.rig.ocpp_release("1.%d.0" % self.versions, defects, **kw)

    def firmware_request(self, fw, retrieve=None, install=None):
        firmware = {"location": fw["location"], "retrieve_date_time": retrieve or iso(-7200)}
        if install is not None:
            firmware["install_date_time"] = install
        for key in ("signing_certificate", "signature"):
            if fw.get(key):
                firmware[key] = fw[key]
        return firmware

    def update(self, request_id, fw, retrieve=None, install=None, retries=None, interval=None):
        """UpdateFirmware (1.6: SignedUpdateFirmware); the response status."""
        firmware = self.firmware_request(fw, retrieve, install)
        if self.protocol == "1.6":
            from ocpp.v16 import call

            message = call.SignedUpdateFirmware(
                request_id=request_id, firmware=firmware, retries=retries, retry_interval=interval
            )
        else:
            from ocpp.v201 import call

            message = call.UpdateFirmware(request_id=request_id, firmware=firmware,
                                          retries=retries, retry_interval=interval)  # fmt: skip
        return str(self.csms.call(self.station, message).status)

    def set_variable(self, component, variable, value):
        from ocpp.v201 import call

        data = [{"component": {"name": component}, "variable": {"name": variable},
                 "attribute_value": value}]  # fmt: skip
        result = self.csms.call(self.station, call.SetVariables(set_variable_data=data))
        assert result.set_variable_result[0]["attribute_status"] == "Accepted"

    def since(self, kind=None):
        return [(k, e) for k, e in self.csms.timeline[self.mark :] if kind is None or k == kind]

    def statuses(self, request_id=None):
        return [e["status"] for _, e in self.since("firmware")
                if request_id is None or e["request_id"] == request_id]  # fmt: skip

    def wait_status(self, request_id, wanted, timeout=T):
        wanted = (wanted,) if isinstance(wanted, str) else wanted
        first = self.mark
        return self.csms.wait_for(
            "firmware",
            lambda e: e["request_id"] == request_id and e["status"] in wanted
            and self.csms.position(e) >= first,
            timeout,
        )  # fmt: skip

    def wait_event(self, kind, timeout=T):
        first = self.mark
        return self.csms.wait_for(
            "security_events", lambda e: e["type"] == kind and self.csms.position(e) >= first,
            timeout,
        )  # fmt: skip

    def boots(self):
        return [e for _, e in self.since("boots")]

    def pos(self, record):
        return self.csms.position(record)

    def settled(self, request_id, result):
        """Wait until the MQTT inventory shows the request's journey ended with `result` (the
        agent publishes it with the final status): the station is ready for the next case."""
        prefix = "ocpp-%d-" % request_id
        return self.rig.backend.wait_inventory(
            self.station, lambda r: (r.get("last_job") or {}).get("result") == result
            and (r.get("last_job") or {}).get("id", "").startswith(prefix), T,
        )  # fmt: skip


def in_order(seen, expected):
    """True when `expected` appears in `seen` in this order (others may come in between)."""
    i = 0
    for s in seen:
        if i < len(expected) and s == expected[i]:
            i += 1
    return i == len(expected)


def board(tmp_path_factory, protocol):
    rig = VirtualRig(str(tmp_path_factory.mktemp("ocpp-%s" % protocol)), watchdog_s=10.0,
                     trial_window_s=30, ocpp=protocol, agent_overrides=QUICK_TRIAL)  # fmt: skip
    rig.start()
    try:
        rig.power_on()
        rig.wait_online(60)
        rig.csms.wait_for("boots", lambda b: True, 60)
        rig.csms.wait_for("connectors", lambda c: True, 60)
    except BaseException:
        rig.close()
        raise
    return rig


@pytest.fixture(scope="module")
def station201(tmp_path_factory):
    rig = board(tmp_path_factory, "2.0.1")
    yield Conformance(rig, "2.0.1")
    rig.close()


@pytest.fixture(scope="module")
def station16(tmp_path_factory):
    rig = board(tmp_path_factory, "1.6")
    yield Conformance(rig, "1.6")
    rig.close()
