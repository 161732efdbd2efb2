"""What a rollout's chargers will download, before it starts: a format-2 release is installed
by delta (agent/transfer/delta.py), so a charger fetches only the blocks its booted slot lacks,
and a cellular charger pays for those, not for the whole bundle.

The estimate needs no charger and no image: a charger's booted slot holds the release it
runs, and that release's own format-2 bundle names what a scan of the slot would find (its
group ids, and the short id of every block). The plan is then made as the charger makes it
(adaptive.Plan, the same decisions and the same coalescing of ranges), against the base
bundle's index instead of the slot, and its requests are made to the new bundle's server as
the charger would make them (the same first request, the same batches): the estimate is
the bytes that server sent, multipart framing included, what the charger's link would carry.
That fetches the delta once per base version, over the operator's own link.

Invariant: an estimate comes only from bundles whose signatures `trust_root` accepts (their
group indexes are signed; the base's block lists are taken as served: a server that lies
about them moves the estimate, never what a charger installs), and the charger's inactive
slot is taken to hold nothing useful, so the figure is what a charger downloads at most (it
downloads less when that slot still holds a release that has some of the blocks). Where no
estimate can be made (a format-1 bundle on either side, no bundle known for the charger's
version, other block sizes or grouping, a server that does not answer ranges) the reason is
given and the charger counts with the whole bundle.
"""

import urllib.parse

from agent.bundle import format as fmt
from agent.core.errors import UpdateError
from agent.transfer import adaptive
from agent.transfer import delta as agent_delta
from agent.transfer.ranges import RangesUnsupported, open_ranges
from agent.trust.store import Trust

# A base bundle's details are read whole (6 bytes a block: 400 KB for a 272 MiB image); a
# larger detail section is not read for an estimate.
MAX_BASE_DETAILS = 64 << 20
# An operator waits for a dry run: a dropped or refused connection is retried twice, briefly.
SETTINGS = {"timeout_s": 30.0, "retries": 2, "backoff_s": 0.5, "backoff_max_s": 5.0,
            "max_time_s": 600.0}  # fmt: skip


class NoEstimate(Exception):
    """Why a charger of some version is counted with the whole bundle."""


class NotWanted(NoEstimate):
    """The base bundle is of a version no target runs: nothing to estimate from it."""


class _BaseSlot:
    """What a charger's scan of its booted slot finds (adaptive.Slot's `groups` and `blocks`),
    read from the base bundle's index: the first place of each group id and of each non-zero
    block's short id."""

    def __init__(self, index=None):
        self.groups, self.blocks = {}, {}
        if index is None:
            return
        # A scan reads whole blocks only: an image's short last block is not found in a slot
        # (nor the group that ends with it), whatever follows it there. The last group ends
        # with the image, not by the rule: in a slot larger than the image, the blocks after
        # it continue it (unless it is full).
        whole = index.installed_size // index.block_size
        for first, n, _off, _stored, gid in index.groups:
            if first + n < index.count or (n == index.most and first + n <= whole):
                self.groups.setdefault(gid, first)
        for k in range(whole):
            if index.lengths[k]:  # a unit length of 0: an all-zero block, which scans skip
                self.blocks.setdefault(index.short[k], k)


class _CountedPlan(adaptive.Plan):
    """adaptive.Plan that only counts: a group the base has is the base's, by its signed id
    (a charger would check the blocks it reads against that id)."""

    def _take(self, g, kind, slot, at):
        first, n = self.index.groups[g][:2]
        self._decide(first, n, kind, at)


def _location(url):
    """What open_ranges opens for a rollout's URL: a file: URL (file:/path, as fleet/spec.py
    writes a relative one, or file:///path) as its path, as fleet/release.py reads it."""
    if url.startswith("file:"):
        return urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    return url


def _head(url, check, settings):
    ranges = open_ranges(_location(url), settings)
    try:
        head = agent_delta.read_head(ranges, check)
    except BaseException:
        ranges.close()
        raise
    if head is None:
        ranges.close()
        raise NoEstimate("%s is a format-1 bundle" % url)
    return head, ranges


def _offsets(head):
    return dict((p.name, o) for p, o in fmt.payload_offsets(len(head.envelope.raw), head.manifest))


def _base_indexes(head, ranges):
    """{slot class: the base payload's ChunkIndex, every group's detail taken}."""
    out = {}
    offsets = _offsets(head)
    for payload in head.manifest.payloads:
        index = head.indexes.get(payload.name)
        if index is None:
            continue
        if index.detail_size > MAX_BASE_DETAILS:
            raise NoEstimate("the base payload %s has %d bytes of block lists (more than %d)"
                             % (payload.name, index.detail_size, MAX_BASE_DETAILS))  # fmt: skip
        at = offsets[payload.name]
        data = b"".join(d for _, d in ranges.read_ranges([(at, index.detail_size)]))
        for g in range(len(index.groups)):
            start, n = index.detail_span(g)
            index.take_detail(g, data[start : start + n])
        out[payload.slot_class] = index
    return out


def estimate(url, base_url, trust_root, settings=None, wanted=None):
    """Bytes a charger running `base_url`'s release downloads to install `url`'s by delta:
    {"download_bytes" (what the server sent), "planned_bytes" (the plan's bundle bytes, as
    `install --plan` counts them), "bundle_bytes", "base_version", "payloads": [{name,
    fetch_bytes, ranges}]}. NoEstimate says why there is none (an unreachable server too);
    NotWanted when the base's version is not in `wanted` (None: any)."""
    trust = Trust(trust_root)
    settings = dict(SETTINGS, **(settings or {}))
    try:
        # An old release may have expired: its index still says what chargers run.
        base, base_ranges = _head(base_url, trust.verify_envelope, settings)
        try:
            if wanted is not None and base.manifest.version not in wanted:
                raise NotWanted("no target runs %s" % base.manifest.version)
            bases = _base_indexes(base, base_ranges)
        finally:
            base_ranges.close()
        new, new_ranges = _head(url, lambda env: trust.verify(env), settings)
        try:
            return _count(new, new_ranges, base, bases)
        finally:
            new_ranges.close()
    except (UpdateError, OSError, ValueError) as e:
        raise NoEstimate(str(e)) from None
    except RangesUnsupported as e:
        raise NoEstimate("%s (no ranges, no delta)" % e) from None


def _count(new, ranges, base, bases):
    offsets = _offsets(new)
    rows, fetch, whole = [], 0, 0
    for payload in new.manifest.payloads:
        index = new.indexes.get(payload.name)
        if index is None:  # no chunk index (an MCU's image, say): a charger streams it whole
            rows.append({"name": payload.name, "fetch_bytes": payload.size, "ranges": 1})
            fetch, whole = fetch + payload.size, whole + payload.size
            continue
        old = bases.get(payload.slot_class)
        same = ("block_size", "modulus", "most")
        if old is None or any(getattr(old, k) != getattr(index, k) for k in same):
            raise NoEstimate(
                "the bundle of %s has no chunk-indexed %s payload cut the same way"
                % (base.manifest.version, payload.slot_class)
            )
        plan = _CountedPlan(index, offsets[payload.name], _BaseSlot(old), _BaseSlot())
        plan.take_details(ranges)
        for spans in plan.fetches():  # fetched as a charger would, then dropped
            for _ in ranges.read_ranges(spans):
                pass
        rows.append({"name": payload.name, "fetch_bytes": plan.fetch_bytes,
                     "ranges": sum(len(spans) for spans in plan.fetches())})  # fmt: skip
        fetch += plan.fetch_bytes
    m = new.manifest
    return {"download_bytes": ranges.received + whole, "planned_bytes": new.size + fetch,
            "bundle_bytes": new.size + m.payload_bytes, "base_version": base.manifest.version,
            "payloads": rows}  # fmt: skip


def release_bases(spec, rollouts):
    """[(base bundle URL, its version or None: learnt from its head)] to estimate from: the
    rollout file's `bases`, then the releases of earlier rollouts (the bundles their chargers
    have run since), newest first."""
    out = [(url, None) for url in spec.get("bases") or ()]
    seen = set(url for url, _ in out) | {spec["release"]}
    for r in reversed(rollouts):
        url, version = (r.get("release") or {}).get("url"), (r.get("release") or {}).get("version")
        if url and url not in seen:
            seen.add(url)
            out.append((url, version))
    return out


def per_version(spec, release, rollouts, versions, settings=None):
    """{version: (bytes a charger of that version downloads, None or why it is the whole
    bundle)} for the `versions` the rollout's targets run."""
    full = release["bytes"]
    if release.get("format") != 2:
        return dict((v, (full, None)) for v in versions)  # no delta install: all of it
    found, failed = {}, []
    for url, version in release_bases(spec, rollouts):
        if len(found) == len(versions):
            break
        if version is not None and (version not in versions or version in found):
            continue
        try:
            wanted = set(versions) - set(found)
            got = estimate(spec["release"], url, spec["trust_root"], settings, wanted)
        except NotWanted:
            continue
        except NoEstimate as e:
            failed.append("%s: %s" % (url, e))
            continue
        found.setdefault(got["base_version"], got["download_bytes"])
    out = {}
    for v in versions:
        if v in found:
            out[v] = (found[v], None)
        else:
            why = "no format-2 bundle of %s among the bases" % (v or "an unknown version")
            out[v] = (full, why + ("; unusable: %s" % "; ".join(failed[:2]) if failed else ""))
    return out
