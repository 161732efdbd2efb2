"""Learn a release from its signed header, fetched with HTTP Range (or read from a file),
verified with the agent's own trust code against the root the chargers trust.

Invariant: `read_release` returns only what a threshold of release keys signed (version,
security version, compatible models and revisions, sizes); an unsigned or tampered header is
a Blocked error, an unreachable server an Unavailable one.
"""

import http.client
import urllib.parse

from agent.bundle import format as fmt
from agent.core.envelope import MANIFEST_TYPE, MAX_ENVELOPE, parse_envelope
from agent.core.errors import UpdateError
from agent.trust.store import Trust
from fleet.errors import Blocked, SpecError, Unavailable


def _range(url, start, length, timeout=30):
    parts = urllib.parse.urlsplit(url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname, parts.port, timeout=timeout)
    try:
        path = parts.path + ("?" + parts.query if parts.query else "")
        conn.request("GET", path, headers={"Range": "bytes=%d-%d" % (start, start + length - 1)})
        resp = conn.getresponse()
        if resp.status not in (200, 206):
            raise Unavailable(
                "release server answered %d %s for %s" % (resp.status, resp.reason, url)
            )
        data = resp.read(length) if resp.status == 206 else resp.read(start + length)[start:]
        return data
    except OSError as e:
        raise Unavailable("cannot fetch %s: %s" % (url, e)) from None
    finally:
        conn.close()


def _file(url, start, length):
    path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    try:
        with open(path, "rb") as f:
            f.seek(start)
            return f.read(length)
    except OSError as e:
        raise SpecError("cannot read release %s: %s" % (path, e.strerror)) from None


def read_header(url):
    """(envelope bytes, envelope length, bundle format) of the bundle at url: two small
    reads, never the payloads."""
    fetch = _file if url.startswith("file:") else _range
    if not url.startswith(("file:", "http://", "https://")):
        raise SpecError("release %r must be an http(s):// or file: URL" % url)
    try:
        header = fetch(url, 0, fmt.HEADER_SIZE)
        length = fmt.parse_header(header)
    except UpdateError as e:
        raise Blocked("release %s is not a bundle: %s" % (url, e)) from None
    raw = fetch(url, fmt.HEADER_SIZE, min(length, MAX_ENVELOPE))
    if len(raw) != length:
        raise Blocked("release %s ends inside its signed header" % url)
    return raw, length, fmt.header_format(header)


def read_release(url, trust_root, now=None):
    """{url, version, security_version, compatible, bytes, expires, format} of a verified
    release (format 2: chargers install it by delta)."""
    raw, length, bundle_format = read_header(url)
    try:
        trust = Trust(trust_root)
        manifest = trust.verify(parse_envelope(raw, MANIFEST_TYPE), now=now)
    except UpdateError as e:
        raise Blocked(
            "release %s does not verify against %s: %s" % (url, trust_root, e),
            hint="sign it with a release key of that root",
        ) from None
    return {
        "url": url,
        "version": manifest.version,
        "security_version": manifest.security_version,
        "compatible": [
            {"model": c["model"], "hardware_revisions": list(c["hardware_revisions"])}
            for c in manifest.compatible
        ],
        "bytes": fmt.bundle_size(length, manifest),
        "expires": manifest.expires,
        "format": bundle_format,
    }
