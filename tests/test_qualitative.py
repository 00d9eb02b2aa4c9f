"""The samples the qualitative figures show (sdn.qualitative), on hand-made outputs whose kinds
are worked out in the comments, and Grad-CAM of a chosen exit (sdn.gradcam) on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdn.errors import SDNError
from sdn.qualitative import (
    choose_examples,
    class_name,
    complex_rows,
    destructive_mask,
    destructive_rows,
    first_right_ic,
    simple_rows,
    spread_over_classes,
)
from sdn.results import Outputs

# Ten samples, four exits (IC0, IC1, IC2, final); a row is right at an exit where pred == label.
#   row label preds          kind                       conf IC0 / final
#   0   0     0 0 0 0        simple                     .90 / .99
#   1   0     0 1 1 1        simple and destructive     .60 / .80  (1 IC right)
#   2   1     1 1 1 1        simple                     .95 / .99
#   3   1     0 0 0 1        complex                    .20 / .70
#   4   2     0 2 2 0        destructive (2 ICs right)  .30 / .90
#   5   2     0 0 0 2        complex                    .25 / .95
#   6   3     3 3 3 0        simple and destructive (3)  .80 / .60
#   7   3     0 0 0 0        never right                .10 / .50
#   8   0     1 1 1 0        complex                    .40 / .85
#   9   1     1 1 1 0        simple and destructive (3)  .70 / .95
LABELS = np.array([0, 0, 1, 1, 2, 2, 3, 3, 0, 1])
PREDS = np.array([
    [0, 0, 0, 0], [0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1], [0, 2, 2, 0],
    [0, 0, 0, 2], [3, 3, 3, 0], [0, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 0],
])  # fmt: skip
IC0 = [0.90, 0.60, 0.95, 0.20, 0.30, 0.25, 0.80, 0.10, 0.40, 0.70]
FINAL = [0.99, 0.80, 0.99, 0.70, 0.90, 0.95, 0.60, 0.50, 0.85, 0.95]


def make(order: np.ndarray | None = None) -> Outputs:
    conf = np.full(PREDS.shape, 0.5, dtype=np.float32)
    conf[:, 0], conf[:, -1] = IC0, FINAL
    out = Outputs(labels=LABELS.copy(), preds=PREDS.copy(), confidences=conf,
                  confusion=np.zeros(len(LABELS), np.float32),
                  sample_index=np.arange(100, 100 + len(LABELS)))  # fmt: skip
    return out if order is None else out.subset(order)


def test_each_kind_picks_exactly_its_samples():
    out = make()
    # simple = IC0 right: rows 0, 1, 2, 6, 9; ranked by IC0 confidence .95 (2), .90 (0), .80 (6),
    # .70 (9), .60 (1); one class at a time: 2 (class 1), 0 (class 0), 6 (class 3), then the
    # second of each class in rank order: 9 (class 1), 1 (class 0).
    assert simple_rows(out, 10).tolist() == [2, 0, 6, 9, 1]
    # complex = only the final head right: rows 3, 5, 8. By final confidence .95 (5), .85 (8),
    # .70 (3); their classes 2, 0, 1 are all distinct.
    assert complex_rows(out, 10).tolist() == [5, 8, 3]
    # destructive = some IC right and final wrong: rows 1, 4, 6, 9. Most ICs right first: 6 and 9
    # (3 ICs), then 4 (2), then 1 (1); 6 vs 9 tie on ICs, final confidence .95 (9) > .60 (6).
    assert destructive_mask(out).tolist() == [i in (1, 4, 6, 9) for i in range(10)]
    assert destructive_rows(out, 10).tolist() == [9, 6, 4, 1]
    assert destructive_rows(out, 2).tolist() == [9, 6]
    assert first_right_ic(out, np.array([9, 6, 4, 1, 7])).tolist() == [0, 0, 1, 0, -1]


def test_the_choice_is_deterministic_and_follows_the_samples_not_their_order():
    out = make()
    first = choose_examples(out, n=3)
    again = choose_examples(make(), n=3)
    for kind in ("simple", "complex", "destructive"):
        assert getattr(first, kind).tolist() == getattr(again, kind).tolist()
    assert first.counts == {"simple": 5, "complex": 3, "destructive": 4}
    # The same samples in another row order are chosen again (compared by sample index).
    order = np.array([7, 3, 9, 0, 5, 2, 8, 1, 6, 4])
    shuffled = make(order)
    moved = choose_examples(shuffled, n=3)
    for kind in ("simple", "complex", "destructive"):
        assert (shuffled.sample_index[getattr(moved, kind)].tolist()
                == out.sample_index[getattr(first, kind)].tolist()), kind  # fmt: skip


def test_ties_go_to_the_earlier_row_and_classes_take_turns():
    labels = np.array([0, 0, 0, 1, 1, 2])
    score = np.array([0.5, 0.5, 0.9, 0.1, 0.1, 0.1])
    rows = np.arange(6)
    # Ranked: 2 (.9), then 0 and 1 (.5, tie by row), then 3, 4, 5 (.1). Each class's best in rank
    # order: 2 (class 0), 3 (class 1), 5 (class 2); then the second bests: 0, 4; then 1.
    assert spread_over_classes(rows, labels, [score], 6).tolist() == [2, 3, 5, 0, 4, 1]
    assert spread_over_classes(rows, labels, [score], 0).tolist() == []
    assert spread_over_classes(np.array([], int), labels, [score], 4).tolist() == []
    with pytest.raises(SDNError, match="non-negative integer"):
        spread_over_classes(rows, labels, [score], -1)


def test_a_cnn_has_no_simple_or_destructive_samples():
    cnn = Outputs(labels=np.array([0, 1]), preds=np.array([[0], [0]]),
                  confidences=np.ones((2, 1), np.float32), confusion=np.zeros(2, np.float32))  # fmt: skip
    for fn in (lambda o: simple_rows(o, 2), lambda o: destructive_rows(o, 2), choose_examples):
        with pytest.raises(SDNError, match="internal classifiers"):
            fn(cnn)


def test_class_names():
    assert class_name(("cat", "dog"), 1) == "dog"
    assert class_name(None, 7) == "7" and class_name(("cat",), 3) == "3"


# ---------------------------------------------------------------------------- Grad-CAM
@pytest.fixture(scope="module")
def tiny() -> dict[str, torch.nn.Module]:
    from sdn.models import build_cnn, build_sdn

    torch.manual_seed(0)
    return {
        "resnet56": build_sdn("resnet56", 10, image_size=32, width=0.125).eval(),
        "vgg16": build_sdn("vgg16", 10, image_size=32, width=0.125).eval(),
        "cnn": build_cnn("mobilenet", 10, image_size=32, width=0.125).eval(),
    }


def _images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_maps_have_the_image_size_and_lie_in_0_1(tiny):
    from sdn.gradcam import gradcam

    model = tiny["resnet56"]
    x = _images()
    for exit_index in range(model.num_exits):
        cam = gradcam(model, x, exit_index)
        assert cam.maps.shape == (3, 32, 32) and cam.maps.dtype == np.float32
        assert cam.maps.min() >= 0 and cam.maps.max() <= 1 + 1e-6
        peaks = cam.maps.reshape(3, -1).max(axis=1)
        assert np.all((np.abs(peaks - 1) < 1e-5) | (peaks == 0))  # each map / its own max
        assert cam.exit_index == exit_index and cam.targets.shape == (3,)


def test_the_map_depends_on_the_exit_and_its_block(tiny):
    from sdn.gradcam import exit_predictions, feeding_block, gradcam

    model = tiny["resnet56"]
    x = _images()
    ic0, final = gradcam(model, x, 0), gradcam(model, x, model.num_exits - 1)
    # ResNet-56's IC0 reads block 3 (32x32 at 32 px), the final head the last block (8x8).
    assert (ic0.block, ic0.map_size) == (model.ic_positions[0], 32) == (3, 32)
    assert (final.block, final.map_size) == (len(model.backbone.blocks) - 1, 8)
    assert feeding_block(model, -1) == final.block
    assert not np.allclose(ic0.maps, final.maps)
    # Default targets are each exit's own prediction; another class gives another map.
    preds, _ = exit_predictions(model, x)
    assert ic0.targets.tolist() == preds[:, 0].tolist()
    other = gradcam(model, x, 0, targets=(preds[:, 0] + 1) % 10)
    assert not np.allclose(other.maps, ic0.maps)
    # Same call, same maps.
    assert np.array_equal(gradcam(model, x, 0).maps, ic0.maps)


def test_a_map_smaller_than_min_size_moves_to_an_earlier_block(tiny):
    from sdn.gradcam import block_sizes, gradcam, gradcam_block

    model = tiny["vgg16"]
    sizes = block_sizes(model, 32)
    assert sizes[-1] == 1  # VGG-16's last block ends with a pool down to 1x1 at 32 px
    block, size = gradcam_block(model, model.num_exits - 1, 32)
    assert (
        size >= 4
        and sizes[block + 1] < 4
        and block == max(i for i, s in enumerate(sizes) if s >= 4)
    )
    cam = gradcam(model, _images(2), model.num_exits - 1)
    assert cam.block == block and cam.maps.std() > 0  # not a flat 1x1 map blown up
    assert gradcam_block(model, model.num_exits - 1, 32, min_size=1)[0] == len(sizes) - 1


def test_a_plain_cnn_and_bad_arguments(tiny):
    from sdn.gradcam import gradcam

    cnn = tiny["cnn"]
    cam = gradcam(cnn, _images(2), 0)
    assert cam.maps.shape == (2, 32, 32)
    with pytest.raises(SDNError, match="out of range"):
        gradcam(cnn, _images(2), 1)
    with pytest.raises(SDNError, match="one class per image"):
        gradcam(tiny["resnet56"], _images(2), 0, targets=[1, 2, 3])
    with pytest.raises(SDNError, match=r"\[B, 3, H, H\]"):
        gradcam(cnn, torch.zeros(2, 1, 32, 32), 0)
    with pytest.raises(SDNError, match="SDN or a CNN"):
        gradcam(torch.nn.Linear(3, 3), _images(1), 0)


def test_models_are_left_as_they_were(tiny):
    from sdn.gradcam import gradcam

    model = tiny["resnet56"]
    model.train()
    model.backbone.blocks[0].eval()  # a mixed state, as ic_only training leaves it
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    gradcam(model, _images(), 2)
    assert flags == [m.training for m in model.modules()]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats too
    assert all(p.grad is None for p in model.parameters())
    model.eval()
