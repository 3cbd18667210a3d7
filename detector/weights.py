"""Where checkpoints live, and fetching the DFDC winner's (release 0.0.1 of selimsef/dfdc_deepfake_challenge).

One default location serves both ``weights download`` and the config's ``detector.weights_dir``:
``$DEEPFAKE_STREAM_WEIGHTS``, else ``~/.cache/deepfake-stream/weights``.  Downloads go to
``<name>.part`` and resume with an HTTP Range request; a finished file can be checked (``verify``)
before it takes its final name, so a broken connection or a wrong file never replaces anything.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
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
WEIGHTS_ENV = "DEEPFAKE_STREAM_WEIGHTS"
URL_ENV = "DEEPFAKE_STREAM_WEIGHTS_URL"  # a mirror of the release, for machines that cannot reach GitHub


class DownloadError(RuntimeError):
    """A checkpoint that could not be fetched; the message says which and why."""


def default_cache_dir() -> Path:
    """``$DEEPFAKE_STREAM_WEIGHTS`` or ``~/.cache/deepfake-stream/weights``."""
    env = os.environ.get(WEIGHTS_ENV)
    return Path(env) if env else Path.home() / ".cache" / "deepfake-stream" / "weights"


def release_url() -> str:
    """Where checkpoints are downloaded from: ``$DEEPFAKE_STREAM_WEIGHTS_URL`` or the winner's GitHub release."""
    return os.environ.get(URL_ENV) or RELEASE_URL


def download_command(weights_dir: Path, names: Iterable[str] | None = None) -> str:
    """The command that, copied, fetches ``names`` (all published checkpoints by default) into ``weights_dir``."""
    command = "deepfake-stream weights download"
    if weights_dir.expanduser().resolve() != default_cache_dir().expanduser().resolve():
        command += f" --dir {weights_dir}"
    wanted = list(names) if names is not None else list(PUBLISHED_CHECKPOINTS)
    if wanted != list(PUBLISHED_CHECKPOINTS):
        command += " --names " + " ".join(wanted)
    return command


def download_file(url: str, dest: Path, timeout_s: float = 30.0, progress: bool = True, verify: Callable[[Path], None] | None = None) -> Path:
    """Fetch ``url`` to ``dest`` with resume; an existing ``dest`` is kept as is.

    ``verify(part_file)`` runs on the complete download before it is renamed to ``dest``; if it
    raises, the download is deleted and the error reported as a DownloadError.  A directory this
    call created is removed again when nothing could be fetched into it.
    """
    if dest.is_file():
        return dest
    created = _missing_dirs(dest.parent)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        return _download(url, dest, timeout_s, progress, verify)
    except BaseException:
        for directory in created:  # deepest first; only those still empty
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise


def _missing_dirs(path: Path) -> list[Path]:
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    return missing


def _download(url: str, dest: Path, timeout_s: float, progress: bool, verify: Callable[[Path], None] | None) -> Path:
    # imported here, not at the top: detector.config reads this module's names, and loading a
    # config (or `deepfake-stream --help`, `eval`) must not pay for an HTTP stack it never uses
    import requests
    from tqdm import tqdm

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
    if verify is not None:
        try:
            verify(part)
        except Exception as exc:  # noqa: BLE001 - whatever the check says, this file must not be used
            part.unlink(missing_ok=True)
            raise DownloadError(f"{url}: the downloaded file is not the expected checkpoint ({exc}); deleted it") from None
    part.replace(dest)
    return dest


def download_checkpoints(
    dest_dir: Path,
    names: Iterable[str] = PUBLISHED_CHECKPOINTS,
    base_url: str | None = None,
    progress: bool = True,
    verify: Callable[[Path], None] | None = None,
) -> list[Path]:
    """Fetch each named checkpoint from ``base_url`` (default: ``release_url()``) into ``dest_dir``."""
    base = (base_url or release_url()).rstrip("/")
    return [download_file(f"{base}/{name}", dest_dir / name, progress=progress, verify=verify) for name in names]
