"""Realistic image pairs for `make bench-delta`: ext4 root filesystems made with `mke2fs -d`
from Debian trees (debootstrap minbase plus packages), as a charger's build system makes them.

Releases (each a tree under .cache/bench-delta/trees, built once and reused):
  base   minbase + a charger's base packages, application 1.0, config 1.0
  minor  base + one package (jq), application file and config changed
  major  base + several packages, application file and config changed

Images are reproducible the way build systems make them (fixed UUID, hash seed and time:
Yocto and Debian's image tools do the same); a random UUID would change every metadata
checksum (metadata_csum seeds from it) and no delta tool could do anything about that.
The Debian mirror is the machine's own (its apt sources); no host is named here.
"""

import glob
import os
import shutil
import subprocess

CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache")
ROOT = os.path.join(CACHE, "bench-delta")
SUITE = "bookworm"
BASE_PACKAGES = ["ca-certificates", "iproute2", "python3-minimal", "kmod", "udev"]
RELEASES = {
    "base": {"packages": [], "app": 1},
    "minor": {"packages": ["jq"], "app": 2},
    "major": {"packages": ["jq", "curl", "sqlite3", "openssh-client", "nano", "less"], "app": 3},
}
UUID = "6f0f5e0c-2a61-4c39-9b59-0c1d1e4f7a15"
FAKE_TIME = "1767225600"  # 2026-01-01, as SOURCE_DATE_EPOCH would pin it
# 4 KiB blocks, as mke2fs picks for filesystems of 512 MiB and more; below that it picks 1 KiB
# unless told, and 1 KiB blocks defeat any 4 KiB block matching (docs/transfer.md).
FS_BLOCK = 4096
IMAGE_HEADROOM = 1.25  # the slot is bigger than the tree, as a real partition is
# One slot size for every release, whichever pairs a run compares (a pair's figures must not
# depend on which other pairs ran): 272 MiB holds the biggest (major, 215 MB) with that headroom.
SLOT_SIZE = 272 << 20


def apt_mirror(suite=SUITE):
    """The Debian mirror this machine's apt uses for `suite` (deb822 or one-line sources)."""
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        with open(path) as f:
            stanzas = f.read().split("\n\n")
        for stanza in stanzas:
            fields = {}
            for line in stanza.splitlines():
                if ":" in line and not line.startswith("#"):
                    key, value = line.split(":", 1)
                    fields[key.strip()] = value.split()
            if suite in fields.get("Suites", []) and fields.get("URIs"):
                return fields["URIs"][0]
    for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            words = [w for w in line.split() if not w.startswith("[")]
            if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                return words[1]
    raise RuntimeError("no Debian mirror for %s in /etc/apt/sources*" % suite)


def _app(tree, version):
    """The charger application and its config: changed in every release."""
    app_dir = os.path.join(tree, "opt", "charger")
    os.makedirs(app_dir, exist_ok=True)
    lines = ["# charger application %d.0" % version]
    for i in range(2000):
        lines.append("def handler_%d(evt):  # release %d" % (i, version if i % 97 == 0 else 1))
        lines.append("    return evt.get(%r, %d)" % ("field_%d" % (i % 50), i))
    with open(os.path.join(app_dir, "app.py"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(tree, "etc", "charger.conf"), "w") as f:
        f.write("[charger]\nrelease = %d.0\nmax_current_a = %d\n" % (version, 16 + version))


def _clean(tree):
    """What an image build drops: downloaded .debs and apt's package lists (apt-get clean)."""
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*_*"):
        for path in glob.glob(os.path.join(tree, pattern)):
            os.unlink(path)


def _unmount_under(tree):
    """Unmount what debootstrap left mounted in the tree (seen here: its /proc, once in three
    builds), deepest first; mke2fs -d would otherwise copy /proc and fail on its files."""
    root = os.path.realpath(tree) + os.sep
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].replace("\\040", " ") for line in f]
    for point in sorted((p for p in points if p.startswith(root)), key=len, reverse=True):
        subprocess.run(["umount", point], check=True)


def build_tree(name, log):
    """.cache/bench-delta/trees/NAME, made once (debootstrap minbase + packages)."""
    tree = os.path.join(ROOT, "trees", name)
    if os.path.exists(os.path.join(tree, ".complete")):
        return tree
    shutil.rmtree(tree, ignore_errors=True)
    debs = os.path.join(ROOT, "debs")
    os.makedirs(debs, exist_ok=True)
    include = ",".join(BASE_PACKAGES + RELEASES[name]["packages"])
    cmd = ["debootstrap", "--variant=minbase", "--include=" + include, "--cache-dir=" + debs]
    cmd += [SUITE, tree, apt_mirror()]
    log("building the %s tree: %s" % (name, " ".join(cmd)))
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    _unmount_under(tree)
    _clean(tree)
    _app(tree, RELEASES[name]["app"])
    open(os.path.join(tree, ".complete"), "w").close()
    return tree


def tree_bytes(tree):
    total = 0
    for dirpath, _dirs, files in os.walk(tree):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            total += -(-st.st_size // 4096) * 4096
    return total


def make_image(tree, path, size):
    """ext4 image of `size` bytes holding `tree`, reproducible (fixed UUID, seed, time)."""
    if os.path.exists(path):
        os.unlink(path)
    _unmount_under(tree)  # a tree built before this check may still hold a mount
    env = dict(os.environ, E2FSPROGS_FAKE_TIME=FAKE_TIME)
    cmd = ["mke2fs", "-q", "-F", "-t", "ext4", "-b", str(FS_BLOCK), "-L", "rootfs", "-U", UUID]
    cmd += ["-E", "hash_seed=" + UUID, "-d", tree, path, "%dk" % (size // 1024)]
    subprocess.run(cmd, check=True, env=env)


def images(names, log=print):
    """{name: image path}: every release's tree (cached) as an image of one common size."""
    trees = dict((name, build_tree(name, log)) for name in names)
    biggest = max(tree_bytes(t) for t in trees.values())
    size = SLOT_SIZE
    if biggest * IMAGE_HEADROOM > size:  # a bigger package set: a bigger slot, said loudly
        size = int(biggest * IMAGE_HEADROOM) // (16 << 20) * (16 << 20) + (16 << 20)
        log("the trees need %d MiB slots, more than %d MiB" % (size >> 20, SLOT_SIZE >> 20))
    out = {}
    for name, tree in trees.items():
        path = os.path.join(ROOT, "images", "%s.ext4" % name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        stamp = path + ".size"
        made = "%d bytes, %d-byte blocks" % (size, FS_BLOCK)  # remade when either changes
        if not (os.path.exists(path) and _read(stamp) == made):
            log("making %s (%d MiB) with mke2fs -d" % (path, size >> 20))
            make_image(tree, path, size)
            with open(stamp, "w") as f:
                f.write(made)
        out[name] = path
    return out


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


if __name__ == "__main__":
    print(images(list(RELEASES)))
