"""Cross-validation over folds: a figure per choice, choices compared fold by fold, and a fold sweep's table."""

from __future__ import annotations

import pytest

from gtsrb.cli import preflight
from gtsrb.config import validate
from gtsrb.errors import UserError


@pytest.mark.parametrize("source", ["folder", "synthetic"])
def test_folds_of_a_source_that_has_its_own_validation_set_fail_with_one_line(make_cfg, image_folder, source):
    """Its validation images are fixed, so five folds would be five runs of the same split, averaged as if not."""
    cfg = make_cfg(f"data={source}", f"data.root={image_folder}", "data.folds=5", "data.fold=1")
    with pytest.raises(UserError) as info:
        validate(cfg)
    assert all(text in str(info.value) for text in ["data.folds=5", f"data.source={source}", "data=gtsrb"])
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="same run"):  # the command line checks it before the first job
        preflight([f"data={source}", f"data.root={image_folder}", "data.folds=5", "data.fold=0"], "train")
    validate(make_cfg("data=gtsrb", "data.root=/anywhere", "data.folds=5", "data.fold=1"))
