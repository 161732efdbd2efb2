"""`make demo`: the whole update journey on a virtual charger, printed as it happens.

v1.1 (good, with firmware for the safety MCU, an STM32 flashed through its ROM bootloader,
and the meter MCU, MCUboot over SMP) is downloaded, verified, installed, booted on trial
with both MCUs written, checked and committed; v1.2 (its charging stack refuses sessions,
new MCU firmware too) fails the session check on trial and rolls back by itself, both MCUs
included; the charger ends on v1.1 and charging. Then the CSMS drives it over
OCPP 2.0.1, through the charger's own OCPP stack: UpdateFirmware for v1.3 walks through the
firmware statuses to Installed (sent by the new firmware after its BootNotification), and a
file whose signature does not match ends in InvalidSignature plus the security event. Ends
with the inventory row (the operator's update-matrix row) and the path of the HTML report.
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import time

from agent.core.lifecycle import FINAL_STATUSES
from agent.frontends.ocpp.statuses import FINAL as OCPP_FINAL
from hil.report import Report
from hil.virtual.rig import VirtualRig

T0 = time.monotonic()
SAY_LOCK = threading.Lock()


def say(text):
    # One write per line: statuses arrive on the MQTT thread while the main thread prints.
    with SAY_LOCK:
        sys.stdout.write("[%6.1fs] %s\n" % (time.monotonic() - T0, text))
        sys.stdout.flush()


def show_status(device, status):
    extra = ""
    if status.get("progress") is not None:
        extra = " %d%%" % status["progress"]
    if status.get("check"):
        passed = status.get("passed")
        extra += " check=%s%s" % (
            status["check"],
            "" if passed is None else (" PASS" if passed else " FAIL"),
        )
    if status.get("reason"):
        extra += " reason=%s" % status["reason"]
    say("  %s  %-18s %s%s" % (device, status.get("status"), status.get("version") or "", extra))


def journey(rig, report, version, defects, expect, timeout, mcu=None, meter=None):
    say(
        "building and signing firmware %s%s%s%s"
        % (version, " (defect: %s)" % ", ".join(defects) if defects else "",
           " with safety-MCU firmware %s" % mcu[0] if mcu else "",
           " and meter-MCU firmware %s" % meter[0] if meter else "")
    )  # fmt: skip
    url = rig.release(version, defects, mcu=mcu, meter=meter)
    job = rig.push_job(version, url)
    say("job %s pushed: %s" % (job["id"], url))
    final = rig.wait_status(
        job["id"],
        FINAL_STATUSES,
        timeout,
    )
    report.scenario("update to %s" % version, rig, job["id"], expect, final)
    if final["status"] != expect:
        raise SystemExit("demo: expected %s for %s, got %s" % (expect, version, final))
    evidence = final.get("evidence")
    problem = evidence.get("problem", "") if isinstance(evidence, dict) else evidence
    why = " (%s: %s)" % (final["check"], problem) if final.get("check") else ""
    say("=> %s %s%s" % (version, final["status"], why))
    if mcu:
        say("safety MCU (STM32, ROM bootloader over UART) now runs %s" % rig.mcu_version())
    if meter:
        version, confirmed = rig.meter_state()
        say("meter MCU (MCUboot, SMP over UART) now runs %s, %s"
            % (version, "confirmed" if confirmed else "NOT confirmed"))  # fmt: skip
    return final


def show_csms(kind, record):
    """One line per message the CSMS received from the station's OCPP stack."""
    if kind == "firmware":
        say("  CSMS <- FirmwareStatusNotification %-17s requestId=%s"
            % (record["status"], record["request_id"]))  # fmt: skip
    elif kind == "security_events":
        say("  CSMS <- SecurityEventNotification  %s" % record["type"])
    elif kind == "boots":
        say("  CSMS <- BootNotification reason=%s firmware %s"
            % (record["reason"], record["station"].get("firmware_version")))  # fmt: skip
    elif kind == "connectors":
        say("  CSMS <- StatusNotification connector %s" % record["status"])


def csms_journey(rig, report, request_id, version, expect, event, timeout, **release):
    """The CSMS sends UpdateFirmware; follow what the station reports until `expect` and the
    security event `event` arrived."""
    import datetime

    from ocpp.v201 import call

    fw = rig.ocpp_release(version, **release)
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=2)
    firmware = {"location": fw["location"], "retrieve_date_time": past.strftime(
        "%Y-%m-%dT%H:%M:%SZ"), "signing_certificate": fw["signing_certificate"],
        "signature": fw["signature"]}  # fmt: skip
    seen = len(rig.csms.timeline)
    reply = rig.csms.call(rig.device_id, call.UpdateFirmware(request_id=request_id,
                                                             firmware=firmware))  # fmt: skip
    say("CSMS -> UpdateFirmware requestId=%d %s%s: %s" % (request_id, version,
        " (signature over other bytes)" if release.get("bad_signature") else "",
        reply.status))  # fmt: skip
    final, got_event, deadline = None, False, time.monotonic() + timeout
    while (final is None or not got_event) and time.monotonic() < deadline:
        for kind, record in rig.csms.wait_timeline(seen, 1.0):
            seen += 1
            show_csms(kind, record)
            if kind == "firmware" and record["request_id"] == request_id:
                if record["status"] in OCPP_FINAL:
                    final = record["status"]
            got_event = got_event or (kind == "security_events" and record["type"] == event)
    job = [s for s in rig.statuses() if str(s.get("job_id")).startswith("ocpp-%d-" % request_id)]
    job_id = job[0]["job_id"] if job else None
    report.scenario("CSMS update to %s" % version, rig, job_id, expect, {"status": final})
    if final != expect or not got_event:
        raise SystemExit("demo: expected %s and %s for requestId %d, got %s (event seen: %s)"
                         % (expect, event, request_id, final, got_event))  # fmt: skip
    say("=> requestId %d %s, security event %s" % (request_id, final, event))


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m hil.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workdir", help="keep everything here (default: a temp dir)")
    parser.add_argument("--timeout", type=float, default=90, help="per journey, seconds")
    args = parser.parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="charger-demo-")
    os.makedirs(workdir, exist_ok=True)
    report = Report(os.path.join(workdir, "report"))
    say("work dir %s" % workdir)
    with VirtualRig(workdir, on_status=show_status, ocpp="2.0.1") as rig:
        say(
            "mosquitto on 127.0.0.1:%d, OCPP CSMS at %s, images at %s"
            % (rig.broker.port, rig.csms.url, rig.images.base_url)
        )
        say(
            "powering on virtual charger %s (factory firmware %s in slot A)"
            % (rig.device_id, rig.factory_version)
        )
        rig.power_on()
        rig.wait_online(30)
        say("charger online; relay, console and EV simulator driven over pyserial")
        say("EV simulator: %s" % (rig.evsim.status(),))
        say("safety MCU runs %s and meter MCU %s from the factory"
            % (rig.mcu_version(), rig.meter_state()[0]))  # fmt: skip
        journey(rig, report, "1.1.0", (), "Committed", args.timeout, mcu=("2.0.0", ()),
                meter=("2.0.0", ()))  # fmt: skip
        boots_before = len(rig.csms.boots)
        journey(rig, report, "1.2.0", ("refuse-session",), "RolledBack", args.timeout,
                mcu=("2.1.0", ()), meter=("2.1.0", ()))  # fmt: skip
        row = rig.backend.wait_inventory(
            rig.device_id, lambda r: (r.get("last_job") or {}).get("result") == "RolledBack", 30
        )
        rig.csms.wait_for(
            "boots",
            lambda b: b["station"].get("firmware_version") == "1.1.0" and b["n"] > boots_before,
            30,
        )
        say("station back on 1.1.0 and connected to the CSMS; a driver charges:")
        stack = rig.stack()
        for cmd in ("authorize", "start", "meter", "meter", "stop"):
            say("  %-9s -> %s" % (cmd, json.dumps(stack.request(cmd, id_tag="DRIVER-42"))))
        tx = rig.csms.wait_for(
            "transactions", lambda t: t["event"] == "Ended" and t["id_token"] == "DRIVER-42", 30
        )
        say("CSMS recorded transaction %s: %s Wh" % (tx["tx"], tx["energy_wh"]))
        say("now the CSMS drives the update over OCPP 2.0.1, through the charger's own stack")
        csms_journey(rig, report, 7, "1.3.0", "Installed", "FirmwareUpdated", args.timeout)
        csms_journey(rig, report, 8, "1.4.0", "InvalidSignature", "InvalidFirmwareSignature",
                     args.timeout, bad_signature=True)  # fmt: skip
        row = rig.backend.wait_inventory(
            rig.device_id,
            lambda r: (r.get("last_job") or {}).get("result") == "InvalidSignature",
            30,
        )
        say("inventory row:")
        print(json.dumps(row, indent=2, sort_keys=True))
    path = report.write()
    say("HTML report: %s" % path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
