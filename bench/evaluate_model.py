"""Honest evaluation of a trained classifier on the shared labelled clips.

Input: a predictions CSV written by ``deepfake-stream scan`` (``filename,label``) and the clips'
``labels.csv`` (``file,label,kind``).  Fakes of each kind are scored against REAL videos of
held-out identities only (``--held-out``: file names, stems or identities the model never saw
in training), with a video-level ROC AUC, its stratified bootstrap 95 % interval (2000 draws,
fixed seed) and the log loss, beside the constant 0.5 baseline.  Prints a table, writes JSON.

    uv run deepfake-stream scan ../shared/media/clips --weights out/sbi-lite0.pth \
        --encoder tf_efficientnet_lite0 --out out/sbi-predictions.csv   # input_size from config: 320
    uv run python bench/evaluate_model.py out/sbi-predictions.csv --labels ../shared/media/clips/labels.csv \
        --held-out hdtf-RD_Radio2_000 hdtf-RD_Radio34_000 nicoletmk-Real1 wav2lip-kim_7s_raw --out out/sbi-eval.json
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream.evaluate import EvalInputError, read_labels, read_predictions  # noqa: E402
from training.evaluate import EvaluationError, evaluate_by_kind, format_table  # noqa: E402
from training.layout import DatasetError  # noqa: E402
from training.prepare import identity_of, read_manifest  # noqa: E402


def read_kinds(path: Path) -> dict[str, str]:
    """``file`` -> ``kind`` of a labels.csv (``unknown`` where it has no kind column)."""
    with path.open(newline="", encoding="utf-8") as handle:
        return {row["file"]: row.get("kind") or "unknown" for row in csv.DictReader(handle)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictions", type=Path, help="CSV from `deepfake-stream scan` (filename,label)")
    parser.add_argument("--labels", type=Path, required=True, help="labels.csv with file,label,kind")
    parser.add_argument("--held-out", nargs="+", required=True, help="REAL files, stems or identities never used in training")
    parser.add_argument("--manifest", type=Path, default=None, help="CSV with file,identity (default identity: the file stem)")
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    try:
        predictions = read_predictions(args.predictions)
        labels = read_labels(args.labels)
        kinds = read_kinds(args.labels)
        manifest = read_manifest(args.manifest) if args.manifest else {}
        identities = {name: identity_of(Path(name), manifest) for name in labels}
        rows = evaluate_by_kind(predictions, {n: (y, kinds.get(n, "unknown")) for n, y in labels.items()}, args.held_out, identities, args.draws, args.seed)
    except (EvalInputError, EvaluationError, DatasetError, OSError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"predictions": args.predictions.name, "labels": args.labels.name, "held_out": args.held_out, "draws": args.draws,
                   "seed": args.seed, "rows": [r.to_json() for r in rows]}
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
