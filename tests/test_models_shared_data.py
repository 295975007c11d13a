"""The multi-contrast training/validation split over ../shared/data: nothing validated on is trained on."""
import numpy as np
import pytest

from models import shared_data as model_data

needs_data = pytest.mark.skipif(not (model_data.data_dir() / "multicontrast" / "tcga").is_dir(),
                                reason="shared multi-contrast data absent")


@needs_data
def test_every_ordered_pair_and_no_validation_image_in_training():
    pairs = model_data.multicontrast_training_pairs(step=4, tcga_step=8)
    validation = model_data.multicontrast_evaluation_pairs()
    assert set(validation) == {"tumour_T1pre->T2", "tumour_T1pre->FLAIR", "tumour_T2->FLAIR", "FG-6692_T1->T2",
                               "FG-6692_T1->FLAIR", "FG-6692_T2->FLAIR"}  # T2->FLAIR since the SGF-MRI rework
    held_out = [a for ref, tgt in validation.values() for a in (ref.reshape(-1, *ref.shape[-2:]),
                                                                 tgt.reshape(-1, *tgt.shape[-2:])) for a in a]
    for ref, tgt in pairs:
        for im in (ref, tgt):
            for v in held_out:
                assert im.shape != v.shape or not np.allclose(im, v)
    # each co-registered set gives every ordered pair of distinct contrasts: both directions are present
    ids = {(id(r), id(t)) for r, t in pairs}
    assert all((id(t), id(r)) in ids for r, t in pairs)
    assert model_data.TRAINING_TCGA != model_data.VALIDATION_TCGA
