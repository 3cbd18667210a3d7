"""Fetching the DFDC winner's published checkpoints (release 0.0.1 of selimsef/dfdc_deepfake_challenge).

Downloads go to ``<name>.part`` and resume with an HTTP Range request, so a
broken connection never leaves a truncated file under the final name.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

DEFAULT_ENCODER = "tf_efficientnet_b7.ns_jft_in1k"  # what the published checkpoints were trained with
RELEASE_URL = "https://github.com/selimsef/dfdc_deepfake_challenge/releases/download/0.0.1"
PUBLISHED_CHECKPOINTS = (
    "final_111_DeepFakeClassifier_tf_efficientnet_b7_ns_0_36",
    "final_555_DeepFakeClassifier_tf_efficientnet_b7_ns_0_19",
    "final_777_DeepFakeClassifier_tf_efficientnet_b7_ns_0_29",
    "final_777_DeepFakeClassifier_tf_efficientnet_b7_ns_0_31",
    "final_888_DeepFakeClassifier_tf_efficientnet_b7_ns_0_37",
    "final_888_DeepFakeClassifier_tf_efficientnet_b7_ns_0_40",
    "final_999_DeepFakeClassifier_tf_efficientnet_b7_ns_0_23",
)
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A checkpoint that could not be fetched; the message says which and why."""


def default_cache_dir() -> Path:
    """``$DEEPFAKE_STREAM_WEIGHTS`` or ``~/.cache/deepfake-stream/weights``."""
    env = os.environ.get("DEEPFAKE_STREAM_WEIGHTS")
    return Path(env) if env else Path.home() / ".cache" / "deepfake-stream" / "weights"


def download_file(url: str, dest: Path, timeout_s: float = 30.0, progress: bool = True) -> Path:
    """Fetch ``url`` to ``dest`` with resume; an existing ``dest`` is kept as is."""
    # imported here, not at the top: detector.config reads this module's names, and loading a
    # config (or `deepfake-stream --help`, `eval`) must not pay for an HTTP stack it never uses
    import requests
    from tqdm import tqdm

    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        response = requests.get(url, headers=headers, stream=True, timeout=timeout_s)
    except requests.RequestException as exc:
        raise DownloadError(f"cannot reach {url}: {type(exc).__name__} (offline? set --base-url to a mirror)") from None
    with response:
        if response.status_code == 416 and have:  # the part file is already complete
            part.replace(dest)
            return dest
        if response.status_code not in (200, 206):
            raise DownloadError(f"{url}: HTTP {response.status_code} {response.reason}")
        if response.status_code == 200:
            have = 0  # server ignored the range: start over
        total = int(response.headers.get("Content-Length", 0)) + have or None
        mode = "ab" if have else "wb"
        with (
            part.open(mode) as out,
            tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar,
        ):
            try:
                for chunk in response.iter_content(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
            except requests.RequestException as exc:
                raise DownloadError(f"{url}: connection lost after {out.tell()} bytes ({type(exc).__name__}); run again to resume") from None
    if total is not None and part.stat().st_size != total:
        raise DownloadError(f"{url}: got {part.stat().st_size} of {total} bytes; run again to resume")
    part.replace(dest)
    return dest


def download_checkpoints(
    dest_dir: Path,
    names: Iterable[str] = PUBLISHED_CHECKPOINTS,
    base_url: str = RELEASE_URL,
    progress: bool = True,
) -> list[Path]:
    """Fetch each named checkpoint from ``base_url`` into ``dest_dir``."""
    return [download_file(f"{base_url.rstrip('/')}/{name}", dest_dir / name, progress=progress) for name in names]
