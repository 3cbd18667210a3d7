"""Video sources, one module per kind, all speaking ``base.FrameSource``.

- ``base``: states, sampled frames, counters and the fps window, written once
- ``config``: a stream's settings (``streams:`` entries)
- ``url``: any FFmpeg URL decoded by PyAV in a thread
- ``process``: the same in a child process (many streams without fighting for the GIL)
- ``webrtc``: an aiortc track (WHIP ingest)
- ``factory``: which of them a configured stream gets

A new kind of source is a new module here implementing ``FrameSource``, chosen in ``factory``.
This package's ``__init__`` imports nothing, so loading a config never loads a decoder.
"""
