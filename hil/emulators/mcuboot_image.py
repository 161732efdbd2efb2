"""MCUboot images (docs.mcuboot.com/design.html#image-format) around an MCU application.

    header (32 bytes, padded to hdr_size): magic 0x96f3b83d, load address, hdr_size,
        protected TLV size, img_size, flags, version (major, minor, revision, build)
    body (img_size bytes)
    TLV info (magic 0x6907, total size) + SHA256 TLV (type 0x10) over header and body

The hash TLV is what `image list` reports and what `image test` names. Parsing uses
smpclient's own MCUboot inspector, so what we build is what a third-party tool accepts.
"""

import hashlib
import struct

IMAGE_MAGIC = 0x96F3B83D
HDR_SIZE = 0x20


def version_tuple(version):
    """'2.1.0' -> (2, 1, 0, 0); a pre-release or build suffix is dropped."""
    core = version.split("-")[0].split("+")[0]
    parts = [int(p) for p in core.split(".")]
    return (parts + [0, 0, 0])[:3] + [0]


def build(body, version):
    major, minor, rev, build_num = version_tuple(version)
    header = struct.pack("<LLHHLLBBHL4x", IMAGE_MAGIC, 0, HDR_SIZE, 0, len(body), 0, major,
                         minor, rev, build_num)  # fmt: skip
    digest = hashlib.sha256(header + body).digest()
    tlvs = struct.pack("<BxH", 0x10, 32) + digest
    return header + body + struct.pack("<HH", 0x6907, 4 + len(tlvs)) + tlvs


def inspect(image):
    """(version string, sha256 hash TLV, body) of a well-formed image; ValueError if not."""
    from smpclient.mcuboot import (
        IMAGE_TLV,
        IMAGE_TLV_INFO_MAGIC,
        ImageHeader,
        ImageInfo,
        ImageTLVInfo,
        MCUBootImageError,
    )

    image = bytes(image)
    try:
        h = ImageHeader.loads(image[:32])  # smpclient's MCUboot parser
        off = h.hdr_size + h.img_size
        info = ImageTLVInfo.loads(image[off : off + 4], IMAGE_TLV_INFO_MAGIC)
        tlvs = ImageInfo.parse_tlvs(image[off + 4 : off + info.tlv_tot])
        digest = [t.value for t in tlvs if t.header.type == IMAGE_TLV.SHA256][0]
    except (MCUBootImageError, IndexError, struct.error, ValueError) as e:
        raise ValueError("not an MCUboot image: %s" % e) from None
    if len(image) < off + info.tlv_tot or hashlib.sha256(image[:off]).digest() != digest:
        raise ValueError("MCUboot image hash TLV does not match its contents")
    v = h.ver
    version = "%d.%d.%d" % (v.major, v.minor, v.revision)
    return version, digest, image[h.hdr_size : off]
