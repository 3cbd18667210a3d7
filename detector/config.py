"""Settings of the detector and of the batching engine, beside the code that uses them.

Every model forbids unknown keys, so a typo in ``config.yaml`` is an error rather than a
silently ignored setting, and every field says what it does (``description``): the
README's config reference and error messages read from here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from detector.weights import DEFAULT_ENCODER, PUBLISHED_CHECKPOINTS, default_cache_dir


def default_compile_cache_dir() -> Path:
    """``$TORCHINDUCTOR_CACHE_DIR`` or ``~/.cache/deepfake-stream/compile``: inductor's own default is under /tmp, lost at reboot.
    Here, not in ``detector/compiled.py``: reading the config must not import torch (``tests/test_cli_imports.py``)."""
    env = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "deepfake-stream" / "compile"


PositiveFloat = Annotated[float, Field(gt=0)]
Probability = Annotated[float, Field(ge=0, le=1)]


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, defaults are validated too."""

    # inf/NaN are never meaningful here, and an infinite timeout overflows the threads' waits
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


class DetectorConfig(StrictModel):
    """The DFDC-winner inference settings (faces, crops, classifier, aggregation)."""

    weights_dir: Path = Field(
        default_factory=default_cache_dir,
        description="directory relative `weights` entries are read from; default $DEEPFAKE_STREAM_WEIGHTS or ~/.cache/deepfake-stream/weights, "
        "where `deepfake-stream weights download` puts them",
    )
    weights: list[Path] = Field(
        default_factory=lambda: [Path(name) for name in PUBLISHED_CHECKPOINTS],
        description="classifier checkpoints; several form an ensemble whose per-model results are averaged",
    )
    fallback: Literal["embedded", "none"] = Field(
        "embedded",
        description="while none of the DFDC winner's checkpoints is in weights_dir: embedded = run the shipped self-blended model; none = refuse to start",
    )
    encoder: str = Field(DEFAULT_ENCODER, description="timm encoder the checkpoints were trained with")
    input_size: Annotated[int, Field(gt=0, le=2048)] = Field(380, description="classifier input: face crops are padded to this square")
    frames_per_video: Annotated[int, Field(gt=0, le=10_000)] = Field(32, description="offline scan: evenly spaced frames per video")
    thresholds: tuple[Probability, Probability, Probability] = Field((0.7, 0.8, 0.8), description="MTCNN P-, R- and O-net thresholds")
    min_face_size: Annotated[int, Field(gt=0)] = Field(20, description="smallest face MTCNN looks for, in pixels of the rescaled frame")
    rescale: Literal["size", "half"] = Field(
        "size", description="frame scale before MTCNN: size = 2x under 300 px, 1x to 1000, 0.5x over 1000, 0.33x over 1900; half = always 0.5"
    )
    strategy: Literal["confident", "mean"] = Field("confident", description="how frame scores become a video or running score")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    batch_size: Annotated[int, Field(gt=0, le=1024)] = Field(64, description="face crops per classifier forward pass")
    fast_mtcnn: bool = Field(True, description="facenet's nets with the per-box crop loops replaced by one exact gather (same boxes)")
    gpu_resize: bool = Field(False, description="CUDA: shrink frames for MTCNN on the GPU (PIL-like, not bit-exact)")
    cuda_graphs: bool = Field(
        False,
        description="CUDA: replay captured graphs: the classifier at fixed batch sizes, and (with fast_mtcnn) MTCNN's P-Net pyramid "
        "per batch size and frame size (captured on first use)",
    )

    compile_classifier: bool = Field(
        False,
        description="CUDA: compile the classifier with torch.compile (inductor, needs triton) before capturing its graphs: "
        "B7 ~1.3x faster a crop (README Capacity); a first start compiles for ~1.5 min, once for all models of an ensemble, "
        "later starts ~30-40 s from compile_cache_dir",
    )
    compile_cache_dir: Path = Field(
        default_factory=default_compile_cache_dir,
        description="where compiled kernels are kept between starts; default $TORCHINDUCTOR_CACHE_DIR or ~/.cache/deepfake-stream/compile",
    )

    @field_validator("weights_dir", "compile_cache_dir")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value == "auto" or value == "cpu" or value == "cuda" or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError("must be 'auto', 'cpu', 'cuda' or 'cuda:N'")

    def weight_paths(self, base: Path | None = None) -> list[Path]:
        """Checkpoint paths, relative ones resolved against ``weights_dir`` (itself against ``base``)."""
        root = self.weights_dir if base is None or self.weights_dir.is_absolute() else base / self.weights_dir
        return [w if w.is_absolute() else root / w for w in self.weights]


class EngineConfig(StrictModel):
    """Cross-stream batching on the one inference worker."""

    max_batch: Annotated[int, Field(gt=0, le=1024)] = Field(32, description="frames per inference batch, across streams")
    # beyond threading.TIMEOUT_MAX the worker's wait raises, hence the bound
    max_wait_ms: Annotated[float, Field(ge=0, le=60_000)] = Field(20.0, description="how long the first frame of a batch waits for company")
    max_pending_per_stream: Annotated[int, Field(gt=0)] = Field(
        4, description="samples a stream may have waiting; beyond it its oldest is dropped (counted)"
    )
    devices: list[str] | Literal["all"] = Field(
        "all",
        description="GPUs to run on, one engine each, streams placed by load (e.g. [cuda:0, cuda:1]); all = every visible GPU "
        "(only when detector.device is auto or cuda; otherwise detector.device alone)",
    )
    detect_workers: Annotated[int, Field(gt=0, le=16)] = Field(
        3,
        description="CUDA: threads detecting batches side by side, so one batch's host work overlaps another's GPU work "
        "(at 150 streams on an H100 two fell behind, three kept up); CPU: 1 is used",
    )
    pipeline_depth: Annotated[int, Field(gt=0, le=16)] = Field(2, description="detected batches that may wait for the classifier")
    nvdec_sessions_per_gpu: Annotated[int, Field(gt=0, le=4096)] = Field(
        512, description="NVDEC decoder sessions per GPU; streams beyond it decode on the CPU (logged)"
    )
    nvdec_workers: Annotated[int, Field(ge=0, le=64)] | None = Field(
        None,
        description="processes per GPU that demux and feed NVDEC for many streams each (frames reach the engine by CUDA IPC); "
        "0 = in the analyzer's own threads (fine for a few streams: many starve the engine of the GIL); "
        "default: 2 with the ffmpeg backend, half the cores (at most 8) with pynvvideocodec",
    )
    nvdec_backend: Literal["pynvvideocodec", "ffmpeg"] = Field(
        "ffmpeg",
        description="what feeds NVDEC: ffmpeg (PyAV's CUDA hwaccel: decodes without holding the GIL, so two worker processes "
        "carry ~100 streams; skip_frame and software fallback by FFmpeg) or pynvvideocodec (NVIDIA's binding: holds the GIL "
        "while the hardware works, hence more worker processes)",
    )

    mps: Literal["auto", "on", "off"] = Field(
        "auto",
        description="CUDA: run the engine and the NVDEC decoder workers under a private CUDA MPS daemon, so their kernels share "
        "the GPU side by side instead of taking turns (150 streams on an H100: p99 1082 -> 844 ms); auto = when "
        "nvidia-cuda-mps-control is on PATH and a CUDA context opens through it, else without (logged); on = refuse to "
        "start without it; off = never. A daemon already named by CUDA_MPS_PIPE_DIRECTORY is used as it is",
    )

    process_per_gpu: bool = Field(
        False,
        description="several GPUs: `deepfake-stream run` starts one analyzer process per GPU (stream/launcher.py), each "
        "watching its share of the streams (an even split by sample rate), with its HTTP on http.port + 1 + its index and MQTT instance gpu<index>; "
        "http.port answers /health for all of them. One process for two GPUs is held back by its one GIL (1.68x one GPU's "
        "streams); a process each held 1.82x in one run of three",
    )

    @field_validator("devices")
    @classmethod
    def _known_devices(cls, value: list[str] | str) -> list[str] | str:
        if value == "all":
            return value
        if not value:
            raise ValueError("list at least one device, or say all")
        for device in value:
            if not (device == "cpu" or device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
                raise ValueError(f"{device!r}: each device must be 'cpu', 'cuda' or 'cuda:N'")
        if len(set(value)) != len(value):
            raise ValueError("a device is listed twice")
        return value
