"""The packaged ImageNet Lite0 weights map one to one onto timm's tf_efficientnet_lite0 and work."""

from __future__ import annotations

import pytest
import timm
import torch
from skimage import data

from detector.preprocessing import normalize_batch, stack_crops
from training.lite import LITE0_ENCODER, WeightMappingError, lite0_weights_path, load_lite0_imagenet, map_lite0_state_dict

CAT_CLASSES = {281, 282, 283, 284, 285, 287}  # tabby, tiger cat, Persian, Siamese, Egyptian cat, lynx
COFFEE_CLASSES = {504, 967, 968}  # coffee mug, espresso, cup


@pytest.fixture(scope="module")
def source() -> dict[str, torch.Tensor]:
    return torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def encoder() -> torch.nn.Module:
    return load_lite0_imagenet(timm.create_model(LITE0_ENCODER, pretrained=False)).eval()


def test_every_tensor_maps_one_to_one_with_equal_shapes(source: dict[str, torch.Tensor]) -> None:
    target = timm.create_model(LITE0_ENCODER, pretrained=False)
    mapped = map_lite0_state_dict(source, target)
    expected = target.state_dict()
    assert set(mapped) == set(expected)
    assert len(mapped) == len(source) == len(expected)
    assert all(mapped[k].shape == v.shape for k, v in expected.items())
    assert sorted(id(t) for t in mapped.values()) == sorted(id(t) for t in source.values())  # each source tensor used once
    assert torch.equal(mapped["blocks.1.0.conv_pw.weight"], source["_blocks.1._expand_conv.weight"])
    assert torch.equal(mapped["blocks.0.0.conv_pw.weight"], source["_blocks.0._project_conv.weight"])


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda s: s.pop("_blocks.3._bn2.running_var"), "blocks.2.0.bn3.running_var"),
        (lambda s: s.__setitem__("_extra.weight", torch.zeros(1)), "_extra.weight"),
        (lambda s: s.__setitem__("_fc.bias", torch.zeros(10)), "classifier.bias (10,)"),
    ],
    ids=["unfilled", "unused", "wrong-shape"],
)
def test_any_mismatch_fails_loudly_naming_the_tensor(source: dict[str, torch.Tensor], change, named: str) -> None:
    broken = dict(source)
    change(broken)
    with pytest.raises(WeightMappingError, match=named.replace(".", r"\.").replace("(", r"\(").replace(")", r"\)")):
        map_lite0_state_dict(broken, timm.create_model(LITE0_ENCODER, pretrained=False))


@pytest.mark.parametrize(("image", "classes"), [("chelsea", CAT_CLASSES), ("coffee", COFFEE_CLASSES)])
def test_mapped_model_classifies_imagenet_photos_with_our_inference_normalisation(encoder: torch.nn.Module, image: str, classes: set[int]) -> None:
    batch = stack_crops([getattr(data, image)()], 224)  # inference's resize + padding, then ImageNet mean/std
    with torch.no_grad():
        probs = encoder(normalize_batch(batch)).softmax(dim=1)[0]
    assert int(probs.argmax()) in classes
    assert float(probs[list(classes)].sum()) > 0.5
