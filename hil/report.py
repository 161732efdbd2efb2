"""A readable record of each HIL run: an HTML timeline per scenario and a JUnit XML file.

Each scenario keeps the statuses the charger reported (in order, with time and sequence
number), the checks and their evidence, and the console lines of the run, so a failed release
can be understood from the report alone.
"""

import html
import json
import os
import time
import xml.etree.ElementTree as ET


class Report:
    def __init__(self, directory):
        self.dir = directory
        self.scenarios = []

    def scenario(self, name, rig, job_id, expect, final, error=None, started=None):
        statuses = rig.statuses(job_id) if rig.backend else []
        self.scenarios.append(
            {
                "name": name,
                "expect": expect,
                "result": (final or {}).get("status"),
                "passed": error is None and (final or {}).get("status") == expect,
                "error": error,
                "statuses": statuses,
                "console": rig.console_text()[-20000:],
                "duration_s": time.monotonic() - started if started else 0.0,
            }
        )

    def write(self):
        os.makedirs(self.dir, exist_ok=True)
        with open(os.path.join(self.dir, "junit.xml"), "wb") as f:
            f.write(self.junit())
        path = os.path.join(self.dir, "report.html")
        with open(path, "w") as f:
            f.write(self.html())
        return path

    def junit(self):
        suite = ET.Element(
            "testsuite",
            name="hil",
            tests=str(len(self.scenarios)),
            failures=str(sum(not s["passed"] for s in self.scenarios)),
        )
        for s in self.scenarios:
            case = ET.SubElement(
                suite, "testcase", classname="hil", name=s["name"], time="%.1f" % s["duration_s"]
            )
            if not s["passed"]:
                failure = ET.SubElement(
                    case, "failure", message="expected %s, got %s" % (s["expect"], s["result"])
                )
                failure.text = s["error"] or ""
            ET.SubElement(case, "system-out").text = s["console"]
        return ET.tostring(suite, encoding="utf-8", xml_declaration=True)

    def html(self):
        parts = [
            "<!doctype html><meta charset=utf-8><title>HIL report</title><style>"
            "body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;text-align:left}"
            ".pass{color:#070}.fail{color:#b00}pre{background:#f4f4f4;padding:8px;"
            "max-height:24em;overflow:auto}</style><h1>HIL report</h1>"
        ]
        for s in self.scenarios:
            verdict = "pass" if s["passed"] else "fail"
            parts.append(
                "<h2 class=%s>%s: %s (expected %s)</h2>"
                % (
                    verdict,
                    html.escape(s["name"]),
                    html.escape(str(s["result"])),
                    html.escape(s["expect"]),
                )
            )
            parts.append("<table><tr><th>seq</th><th>time</th><th>status</th><th>detail</th></tr>")
            for st in s["statuses"]:
                detail = dict(
                    (k, v) for k, v in st.items() if k not in ("seq", "ts", "status", "job_id")
                )
                parts.append(
                    "<tr><td>%s</td><td>%s</td><td>%s</td><td><code>%s</code></td></tr>"
                    % (
                        st.get("seq"),
                        time.strftime("%H:%M:%S", time.gmtime(st.get("ts", 0))),
                        html.escape(str(st.get("status"))),
                        html.escape(json.dumps(detail, sort_keys=True)),
                    )
                )
            parts.append("</table>")
            if s["error"]:
                parts.append("<pre>%s</pre>" % html.escape(s["error"]))
            parts.append(
                "<details><summary>console</summary><pre>%s</pre></details>"
                % html.escape(s["console"])
            )
        return "\n".join(parts)
