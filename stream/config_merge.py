"""Merge a base config with overlay files (secrets) into the one file ``run --config`` reads.

Kubernetes keeps the config in a ConfigMap and the MQTT password and WHIP
tokens in Secrets; our loader reads a single file.  An init container runs

    python -m stream.config_merge --out /etc/deepfake-stream/config.yaml \\
        /config/base/config.yaml /config/secrets/mqtt.yaml /config/secrets/whip.yaml \\
        --set mqtt.client_id=deepfake-stream-$(POD_NAME)

which deep-merges the files in order (mappings merge key by key, anything else
is replaced by the later file), applies ``--set`` paths, validates the result
with the service's own loader (a bad config fails the init container, naming
the field) and writes it readable by its owner only.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from stream.config import ConfigError, parse_config


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """A new mapping: ``overlay`` on top of ``base``, nested mappings merged, everything else replaced."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_mapping(path: Path) -> dict[str, Any]:
    """A YAML file whose top level is a mapping (an empty file is an empty mapping)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config ({exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def parse_assignment(text: str) -> dict[str, Any]:
    """``a.b.c=value`` as the nested mapping ``{a: {b: {c: value}}}``.

    The value is read as a YAML scalar (``8`` is a number, ``false`` a bool);
    anything else (``a: b``, ``[1]``) stays the text it was.
    """
    path, sep, raw = text.partition("=")
    keys = path.split(".")
    if not sep or not all(keys):
        raise ConfigError(f"--set {text!r}: expected key.path=value")
    try:
        value: Any = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        value = raw
    if isinstance(value, (dict, list)):
        value = raw
    for key in reversed(keys):
        value = {key: value}
    return value


def merge_configs(paths: Sequence[Path], assignments: Sequence[str] = ()) -> dict[str, Any]:
    """The files merged in order, then the ``--set`` assignments; validated, so a bad result raises ConfigError."""
    merged: dict[str, Any] = {}
    for path in paths:
        merged = deep_merge(merged, read_mapping(path))
    for text in assignments:
        merged = deep_merge(merged, parse_assignment(text))
    parse_config(merged, " + ".join(str(p) for p in paths))
    return merged


def write_private(data: Mapping[str, Any], out: Path) -> None:
    """Write YAML with mode 0600 (it holds the secrets), atomically: a reader never sees half a file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        yaml.safe_dump(dict(data), handle, sort_keys=False)
    tmp.replace(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stream.config_merge", description=__doc__.splitlines()[0])
    parser.add_argument("files", type=Path, nargs="+", help="config files, later ones win")
    parser.add_argument("--out", type=Path, required=True, help="the merged config to write")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY.PATH=VALUE")
    args = parser.parse_args(argv)
    try:
        write_private(merge_configs(args.files, args.assignments), args.out)
    except ConfigError as exc:
        print(f"error: {exc}".replace("\n", "; "), file=sys.stderr)
        return 2
    print(f"merged {len(args.files)} files into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
