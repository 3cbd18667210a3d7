"""Fault-injection suite, 6 cases (loopback only; each module's docstring lists its cases; docs/reliability.md):

test_rtsp_faults (2): camera killed and back at another resolution; stalled camera and a silent peer.
test_corrupt_stream (1): bit flips in the bitstream, over a file and over RTSP.
test_broker_faults (1): broker restart and crash during an alert episode.
test_engine_faults (2): one stream's non-RGB frames; frames too small for the detector.
"""
