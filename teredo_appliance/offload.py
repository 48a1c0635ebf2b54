"""TUN offloads: TCP super-packets through the TUN instead of ~45 packets a system call each.

A TUN opened with IFF_VNET_HDR and TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO6) prefixes every
packet with a virtio_net_hdr and lets the kernel hand us TSO super-packets (up to 64 KiB of
one TCP flow) and take GSO ones from us. Cutting a super-packet into Teredo-MTU segments and
gluing in-order segments from peers into one touch every byte (TCP checksums), which only
pays in C: the optional extension `teredo_appliance._offload` does it on buffers. Without it
(no compiler at install time) `available()` is False and the TUN stays a plain one, as
before. The protocol verdicts never change: the roles still see one IPv6 packet at a time.

    segment(frame)      one TUN read (header + packet) -> its IPv6 packets; ValueError(reason)
    coalesce(packets)   IPv6 packets for the TUN -> frames to write, in-order TCP merged
"""

from __future__ import annotations

from collections.abc import Sequence

from teredo_appliance.accel import offload as _offload  # None: built without a compiler, the plain TUN path

# include/uapi/linux/if_tun.h and virtio_net.h
IFF_VNET_HDR = 0x4000
TUNSETOFFLOAD = 0x400454D0  # _IOW('T', 208, unsigned int)
TUNSETVNETHDRSZ = 0x400454D8  # _IOW('T', 216, int)
TUN_F_CSUM = 0x01
TUN_F_TSO6 = 0x04
VNET_HDR_LEN = 10  # struct virtio_net_hdr
VNET_F_NEEDS_CSUM = 1
VNET_GSO_NONE = 0
VNET_GSO_TCPV6 = 4
PLAIN_HEADER = bytes(VNET_HDR_LEN)  # a whole packet, checksums done


def available() -> bool:
    """Whether the C extension was built and imports (the TUN offloads can be used)."""
    return _offload is not None


def segment(frame: bytes) -> list[bytes]:
    """The IPv6 packets of one read from a VNET_HDR TUN: a TSO super-packet cut at its
    gso_size with each segment's TCP checksum, a packet whose checksum the kernel left to
    us completed, or the packet as it is. ValueError(reason) for a malformed frame."""
    assert _offload is not None
    return _offload.segment(frame)


def coalesce(packets: Sequence[bytes]) -> list[bytes]:
    """Frames (virtio_net_hdr + packet) to write for `packets`: each flow's in-order TCP
    segments with equal sizes (the last may be shorter) and valid checksums merged into
    one GSO_TCPV6 frame; every other packet alone, unchanged, for the kernel to judge."""
    assert _offload is not None
    return _offload.coalesce(packets)


def checksum(data: bytes, initial: int = 0) -> int:
    """The RFC 1071 Internet checksum of `data` with a 16-bit partial sum `initial` added."""
    assert _offload is not None
    return _offload.checksum(data, initial)
