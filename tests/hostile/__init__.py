"""Hostile-input suite, 62 cases (each module's docstring lists its cases; docs/reliability.md):

test_scan_files (1, 13 files), test_config_files (28), test_checkpoints (19), test_urls (5),
test_whip_bodies (1, 13 requests), test_properties (5, hypothesis), test_security (3).
"""
