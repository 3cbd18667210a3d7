"""Several config files read as one: a base config with overlays (secrets) merged over it.

Kubernetes keeps the config in a ConfigMap and the MQTT password and WHIP tokens in
Secrets.  ``deepfake-stream run --config base.yaml --config mqtt.yaml --config whip.yaml``
reads them as one config (``load_configs``): the files are deep-merged in order
(mappings merge key by key, anything else, lists included, is replaced by the later
file) and validated by the service's own loader; an error names the file that set the
bad field (``secrets/mqtt.yaml: mqtt.pasword: Extra inputs are not permitted``).

For a single merged file on disk instead (another tool, an old set-up)::

    python -m stream.config_merge --out /etc/deepfake-stream/config.yaml \\
        /config/base/config.yaml /config/secrets/mqtt.yaml --set http.port=9000

writes the merge, with ``--set`` paths applied, validated, readable by its owner only.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from stream.config import AppConfig, ConfigError, format_validation_error, load_config, read_config_data


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
    data = read_config_data(path)
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
    layers = [(str(path), read_mapping(path)) for path in paths] + [(f"--set {text}", parse_assignment(text)) for text in assignments]
    merged = merge_layers(layers)
    validate_layers(layers, merged)
    return merged


def load_configs(paths: Sequence[Path]) -> AppConfig:
    """The files merged in order and validated; each error line names the file that set its field.

    One file is exactly ``load_config``.  With several, a field's file is the last one that
    wrote it (a later list or scalar replaces the whole value, a later mapping only its keys).
    """
    if len(paths) == 1:
        return load_config(paths[0])
    layers = [(str(path), read_mapping(Path(path))) for path in paths]
    return validate_layers(layers, merge_layers(layers))


def merge_layers(layers: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for _, data in layers:
        merged = deep_merge(merged, data)
    return merged


def validate_layers(layers: Sequence[tuple[str, Mapping[str, Any]]], merged: Mapping[str, Any]) -> AppConfig:
    """``merged`` as an AppConfig; ConfigError lines name the layer (file or ``--set``) that set each bad field."""
    everyone = " + ".join(name for name, _ in layers)
    try:
        return AppConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(everyone, exc, lambda loc: field_origin(loc, layers) or everyone)) from None


def field_origin(loc: Sequence[str | int], layers: Sequence[tuple[str, Any]]) -> str | None:
    """The name of the last layer that wrote the deepest existing part of ``loc`` in the merge (None: no layer has it)."""
    candidates = list(layers)  # the layers whose value at the path so far survives the merge
    owner = None
    for key in loc:
        having = [(name, data[key]) for name, data in candidates if _has(data, key)]
        if not having:
            break
        owner, value = having[-1]
        if not isinstance(value, Mapping):
            candidates = [having[-1]]  # a list or scalar: the last layer's replaces the others whole
            continue
        run: list[tuple[str, Any]] = []  # mappings merge: the trailing run of them survives
        for name, item in reversed(having):
            if not isinstance(item, Mapping):
                break
            run.append((name, item))
        candidates = run[::-1]
    return owner


def _has(data: Any, key: str | int) -> bool:
    if isinstance(data, Mapping):
        return key in data
    return isinstance(data, list) and isinstance(key, int) and 0 <= key < len(data)


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
