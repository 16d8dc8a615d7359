"""The compact from-scratch ResNets speak the timm API the rest of the framework relies on."""

from __future__ import annotations

import pytest
import torch

from gtsrb.models import build_model, parameter_blocks
from gtsrb.models.factory import min_input_size
from gtsrb.models.small_resnet import VARIANTS


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_classifies_32px_and_splits_into_blocks(name):
    model = build_model(name, 43, drop_rate=0.1)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 43)
    assert min_input_size(model) == 8
    blocks, head = parameter_blocks(model)
    assert len(blocks) == len(model.feature_info) and head == list(model.get_classifier().modules())
    model.reset_classifier(5)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5)


def test_variant_refuses_pretrained_weights():
    from gtsrb.errors import UserError

    with pytest.raises(UserError, match="no pretrained weights"):
        build_model("resnet_gtsrb", 43, pretrained=True)
