"""A looping file's next pass on the same FFmpeg decoder (CPU or FFmpeg's NVDEC), instead of a new one."""

from __future__ import annotations

import av


def drain(stream: av.video.stream.VideoStream) -> list[av.VideoFrame]:
    """An FFmpeg decoder's held pictures, then its end-of-stream state cleared so it decodes on."""
    frames = stream.codec_context.decode(None)
    stream.codec_context.flush_buffers()
    for frame in frames:
        frame.time_base = stream.time_base  # set by Packet.decode, not by the decoder's flush
    return frames  # type: ignore[return-value]


__all__ = ["drain"]
