"""The analysis pass on CUDA gives what it gives on the CPU.

On CUDA, ``sdn.analysis`` copies each batch's results to the host asynchronously (into pinned
memory, waited on through an event) while the next batch's forward pass is queued; on the CPU that
path is never taken. A missing wait would hand out a buffer the copy has not filled yet, and no
CPU test could see it. The CUDA test here skips without a GPU; ``bench/gpu_check.sh`` runs it
(every ``test_*cuda*`` function) on a lent one. The CPU test checks the comparison itself, on two
batchings.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from sdn import build_sdn
from sdn.analysis import collect_outputs
from sdn.data import dataset_info
from sdn.results import Outputs

IMAGES = 300  # two full batches of 128 and a partial one: every copy overlaps the next forward


def outputs_on(model, imageset, device: str, batch_size: int, channels_last: bool = False):
    return collect_outputs(
        copy.deepcopy(model),
        imageset,
        dataset_info("cifar10"),
        batch_size=batch_size,
        device=device,
        keep_logits=True,
        channels_last=channels_last,
    )


def assert_same_outputs(got: Outputs, want: Outputs, rel: float) -> None:
    """Same samples in the same order; logits within ``rel`` (relative norm error); the reduced
    fields consistent with the logits; predictions equal wherever the reference is not near a tie."""
    np.testing.assert_array_equal(got.sample_index, want.sample_index)
    np.testing.assert_array_equal(got.labels, want.labels)
    assert got.logits is not None and want.logits is not None
    assert np.isfinite(got.logits).all() and np.isfinite(got.confidences).all()
    err = np.linalg.norm(got.logits - want.logits) / np.linalg.norm(want.logits)
    assert err < rel, f"relative logit error {err:.2e}"
    # The packed summary travelled in its own copy: it must describe these very logits.
    np.testing.assert_array_equal(got.preds, got.logits.argmax(axis=-1))
    top2 = np.sort(want.logits, axis=-1)[..., -2:]
    clear = (top2[..., 1] - top2[..., 0]) > 1e-2
    assert clear.mean() > 0.9  # the comparison below is not vacuous
    np.testing.assert_array_equal(got.preds[clear], want.preds[clear])
    np.testing.assert_allclose(got.confidences, want.confidences, atol=max(rel, 1e-5))


def spread_model():
    """A small SDN with logits spread enough that few predictions are near ties."""
    torch.manual_seed(0)
    model = build_sdn("resnet56", 10, width=0.125).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:  # the classifiers: larger logits, clearer winners
                p.mul_(8.0)
    return model


def test_analysis_outputs_agree_across_batchings_cpu(imageset_factory):
    model, images = spread_model(), imageset_factory(IMAGES)
    assert_same_outputs(
        outputs_on(model, images, "cpu", 128), outputs_on(model, images, "cpu", IMAGES), 1e-4
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("channels_last", [False, True])
def test_analysis_outputs_cuda_match_cpu(imageset_factory, channels_last):
    model, images = spread_model(), imageset_factory(IMAGES)
    want = outputs_on(model, images, "cpu", 128)
    got = outputs_on(model, images, "cuda", 128, channels_last)
    # cuDNN may use TF32 for float32 convolutions: about 1e-3 per layer, through 56 layers.
    assert_same_outputs(got, want, 2e-2)
