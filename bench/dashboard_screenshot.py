"""Screenshot of the dashboard (docs/dashboard.png): the real service on a few looping shared clips, one alerting.

What runs: the real service (no MQTT: the dashboard does not need it) on five streams, then headless
Chromium on ``/`` and the DevTools ``Page.captureScreenshot`` after ``--seconds``:

- ``studio-a``: the lip-synced (fake) shared clip, looped: alerting, its card red
- ``lobby`` and ``newsdesk``: two real talking-head clips, looped: low scores
- ``review``: the fake clip once, not looped: it alerts, then the file ends (``stopped``, episode closed)
- ``entrance``: an RTSP camera nobody answers: ``reconnecting``

The classifier is the embedded self-blended model (``detector/models/``; no winner's checkpoints
are looked for), so what the cards show is its real detection on these clips.  Needs ``../shared/media/clips`` and
Debian's ``chromium``.  About 3 minutes on 2 CPU cores:

    uv run --frozen python bench/dashboard_screenshot.py --out docs/dashboard.png
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream.app import App  # noqa: E402
from stream.config import parse_config  # noqa: E402
from tests.fixtures.browser import chromium, find_chromium  # noqa: E402

CLIPS = ROOT.parent / "shared" / "media" / "clips"
FAKE = "wav2lip-kim_lip_synced.mp4"
REAL = {"lobby": "wav2lip-kim_7s_raw.mp4", "newsdesk": "retalking-5.mp4"}  # the fake's original, and a held-out talking head


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shrink_png(png: bytes, colors: int = 256) -> bytes:
    """The screenshot with a 256-colour palette: a third of the size, no visible change on this flat UI."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


async def shoot(args: argparse.Namespace, work: Path) -> bytes:
    looped = {"loop": True, "realtime": True, "sample_fps": args.sample_fps}
    streams = [
        {"name": "studio-a", "url": str(CLIPS / FAKE), **looped},
        {"name": "lobby", "url": str(CLIPS / REAL["lobby"]), **looped},
        {"name": "newsdesk", "url": str(CLIPS / REAL["newsdesk"]), **looped},
        {"name": "review", "url": str(CLIPS / FAKE), "realtime": True, "sample_fps": args.sample_fps},
        {"name": "entrance", "url": f"rtsp://127.0.0.1:{closed_port()}/stream", "open_timeout_s": 2, "reconnect_max_s": 4},
    ]
    cfg = parse_config(
        {
            "detector": {"weights_dir": str(work / "no-winner-weights"), "device": "cpu"},  # the embedded model runs
            "streams": streams,
            "health": {"stream_grace_s": 5},
            "mqtt": {"enabled": False},
            "http": {"port": 0},
            "engine": {"max_batch": 8, "max_wait_ms": 10},
        },
        "dashboard screenshot",
    )
    app = App(cfg)
    try:
        await app.start()
        assert app.http is not None
        url = f"http://127.0.0.1:{app.http.port}/"
        started = time.monotonic()
        while (left := args.seconds - (time.monotonic() - started)) > 0:
            print(f"service on {url}: screenshot in {left:.0f} s", flush=True)
            await asyncio.sleep(min(15.0, left))
        async with chromium(url, work / "profile", window_size=(args.width, args.height), executable=args.chromium) as page:
            await page.call("Emulation.setDeviceMetricsOverride", width=args.width, height=args.height, deviceScaleFactor=1, mobile=False)
            await page.wait_for("document.querySelectorAll('.card').length === 5", 20, "five cards")
            await page.wait_for("[...document.querySelectorAll('.shot:not([hidden]) img')].every(i => i.complete && i.naturalWidth > 0)", 10, "snapshots")
            await asyncio.sleep(args.settle)  # a few live updates after the first paint
            shot = await page.call("Page.captureScreenshot", format="png")
            state = await page.evaluate("fetch('/dashboard.json').then(r => r.json())")
        for episode in state["timeline"]:
            print("episode:", {k: episode[k] for k in ("stream", "started_at", "ended_at", "peak", "reason")})
        return base64.b64decode(shot["data"])
    finally:
        await app.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument("--seconds", type=float, default=150.0, help="service run time before the screenshot (the charts fill up)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds between the page's first paint and the screenshot")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--sample-fps", type=float, default=2.0)
    parser.add_argument("--colors", type=int, default=256, help="palette size of the PNG (0: keep Chromium's full-colour PNG)")
    parser.add_argument("--chromium", default=find_chromium())
    args = parser.parse_args(argv)
    if not (CLIPS / FAKE).is_file() or not all((CLIPS / c).is_file() for c in REAL.values()):
        parser.error(f"the shared clips are not at {CLIPS}")
    if args.chromium is None:
        parser.error("chromium not installed: apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="dashboard-shot-") as tmp:
        png = asyncio.run(shoot(args, Path(tmp)))
    if args.colors:
        png = shrink_png(png, args.colors)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(png)
    print(f"wrote {args.out} ({len(png) // 1024} KB, {args.width}x{args.height})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
