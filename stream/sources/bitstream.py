"""Which H.264/H.265 access units no other picture refers to, read from the NAL headers.

A hardware decoder has no ``skip_frame`` switch like FFmpeg's, so a source that samples 2
frames a second out of 30 skips the pictures nothing refers to before they reach the
decoder: dropping them cannot damage any other picture. The packets are Annex B (start
codes), as ``h264_mp4toannexb``/``hevc_mp4toannexb`` and RTSP deliver them.
"""

from __future__ import annotations

from collections.abc import Iterator

H264_SLICE_TYPES = frozenset({1, 5})  # coded slice of a non-IDR / IDR picture
HEVC_VCL_MAX = 31  # nal_unit_type 0..31 are slices
# sub-layer non-reference pictures: TRAIL_N, TSA_N, STSA_N, RADL_N, RASL_N, RSV_VCL_N10/12/14
HEVC_NON_REFERENCE_TYPES = frozenset({0, 2, 4, 6, 8, 10, 12, 14})


def nal_units(data: bytes) -> Iterator[int]:
    """Offsets of the first header byte of each NAL unit in an Annex B buffer."""
    find = data.find
    start = find(b"\x00\x00\x01")
    while start >= 0:
        header = start + 3
        if header >= len(data):
            return
        yield header
        start = find(b"\x00\x00\x01", header)


class ReferenceTracker:
    """Says whether an access unit may be dropped without harming any other picture.

    H.264: every slice has ``nal_ref_idc == 0``. H.265: every slice is a sub-layer
    non-reference type, and the stream has shown only temporal layer 0 (a ``_N`` picture of
    layer 0 may still be referred to by pictures of higher layers, so a stream with temporal
    layers is never skipped). An access unit without slices (parameter sets, SEI) is kept.
    """

    def __init__(self, codec: str) -> None:
        if codec not in ("h264", "hevc"):
            raise ValueError(f"no reference parsing for codec {codec!r}")
        self.codec = codec
        self.temporal_layers = False

    def droppable(self, data: bytes) -> bool:
        slices = 0
        if self.codec == "h264":
            for i in nal_units(data):
                header = data[i]
                if header & 0x1F in H264_SLICE_TYPES:
                    if header & 0x60:  # nal_ref_idc != 0: a reference picture
                        return False
                    slices += 1
            return slices > 0
        for i in nal_units(data):
            if i + 1 >= len(data):
                break
            nal_type = (data[i] >> 1) & 0x3F
            if data[i + 1] & 0x07 > 1:  # nuh_temporal_id_plus1
                self.temporal_layers = True
            if nal_type <= HEVC_VCL_MAX:
                if nal_type not in HEVC_NON_REFERENCE_TYPES:
                    return False
                slices += 1
        return slices > 0 and not self.temporal_layers
