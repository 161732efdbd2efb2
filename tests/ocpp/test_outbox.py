"""The durable, ordered outbox of what the stack must send to the CSMS."""

import threading

from agent.frontends.ocpp.outbox import Outbox


def status(s, rid=7):
    return {"type": "status", "status": s, "request_id": rid}


def test_entries_survive_a_restart_in_order_until_acknowledged(tmp_path):
    path = str(tmp_path / "ocpp.json")
    box = Outbox(path)
    box.remember("job-1", {"request_id": 7, "retrieve_at": None, "install_at": None})
    box.put([status("Downloading"), status("Downloaded"),
             {"type": "security_event", "event": "FirmwareUpdated", "tech_info": "",
              "timestamp": "2026-01-01T00:00:00Z"}])  # fmt: skip
    again = Outbox(path)  # a power cut: a new process reads the file
    assert [e.get("status", e.get("event")) for e in again.pending()] == [
        "Downloading", "Downloaded", "FirmwareUpdated"]  # fmt: skip
    assert again.request("job-1")["request_id"] == 7
    seqs = [e["seq"] for e in again.pending()]
    assert seqs == sorted(seqs)
    assert again.ack(seqs[1]) and [e["seq"] for e in again.pending()] == seqs[2:]
    again.put([status("Installed")])
    assert again.pending()[-1]["seq"] > seqs[-1]  # sequence numbers never repeat


def test_repeated_status_is_dropped_and_callerror_still_ends_delivery(tmp_path, caplog):
    box = Outbox(str(tmp_path / "o.json"))
    box.put([status("Installing"), status("Installing"), status("Installing", rid=8)])
    assert [e["request_id"] for e in box.pending()] == [7, 8]
    assert box.ack(box.pending()[0]["seq"], error="NotImplemented: old CSMS")
    assert "NotImplemented" in caplog.text
    assert len(box.pending()) == 1


def test_full_outbox_drops_old_statuses_but_keeps_security_events(tmp_path):
    box = Outbox(str(tmp_path / "o.json"), limit=3)
    box.put([{"type": "security_event", "event": "E", "tech_info": "", "timestamp": "t"}])
    box.put([status("Downloading"), status("Downloaded"), status("SignatureVerified")])
    kinds = [e.get("status", e.get("event")) for e in box.pending()]
    assert kinds == ["E", "Downloaded", "SignatureVerified"]


def test_corrupt_file_is_set_aside(tmp_path):
    path = tmp_path / "o.json"
    path.write_text("{broken")
    box = Outbox(str(path))
    assert box.pending() == [] and (tmp_path / "o.json.corrupt").exists()


def test_wait_returns_as_soon_as_an_entry_arrives(tmp_path):
    box = Outbox(str(tmp_path / "o.json"))
    threading.Timer(0.05, lambda: box.put([status("Downloading")])).start()
    assert box.wait(5)[0]["status"] == "Downloading"
