"""TrainConfig defaults and validation, the three training modes, checkpoints and exact resume.

Models are tiny (width 0.125) and data is 50 digits images, so an epoch takes well under a second.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from sdn.errors import CheckpointError, SDNError, TrainingDiverged
from sdn.models import SDN
from sdn.training import TrainConfig, Trainer, ic_coefficients, tau_weights

W = 0.125


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _cfg(mode: str, arch: str = "resnet56", **kw) -> TrainConfig:
    kw.setdefault("epochs", 1)
    kw.setdefault("batch_size", 25)
    return TrainConfig(arch=arch, dataset="digits", mode=mode, width=W, device="cpu", **kw)


@pytest.fixture(scope="module")
def cnn_checkpoint(tiny_digits, tmp_path_factory) -> Path:
    """A one-epoch resnet56 cnn run, saved: the starting point of ic_only tests."""
    trainer = Trainer(_cfg("cnn", lr=0.05), tiny_digits)
    trainer.train_epoch()
    return trainer.save(tmp_path_factory.mktemp("ckpt") / "cnn")


# ---------------------------------------------------------------------------------------------
# Configuration


def test_resolved_defaults_follow_the_spec():
    cnn = TrainConfig(arch="vgg16", dataset="cifar10", mode="cnn").resolved()
    assert (cnn.epochs, cnn.lr, cnn.milestones, cnn.weight_decay) == (100, 0.1, [35, 60, 85], 5e-4)
    assert cnn.optimizer_name == "sgd" and cnn.gamma == 0.1 and cnn.batch_size == 128
    ic = TrainConfig(arch="resnet56", dataset="cifar10", mode="ic_only").resolved()
    assert (ic.epochs, ic.lr, ic.milestones, ic.weight_decay) == (25, 1e-3, [15], 1e-4)
    assert ic.optimizer_name == "adam"
    sdn = TrainConfig(arch="mobilenet", dataset="cifar100", mode="sdn", epochs=10).resolved()
    assert sdn.milestones == [4, 6, 9] and sdn.weight_decay == 1e-4  # scaled to 10 epochs
    short = TrainConfig(arch="wrn32_4", dataset="digits", mode="cnn", epochs=1).resolved()
    assert short.milestones == [] and short.weight_decay == 5e-4
    kept = TrainConfig(arch="vgg16", dataset="digits", mode="cnn", epochs=10, milestones=[2])
    assert kept.resolved().milestones == [2]
    assert cnn.resolved() == cnn  # idempotent


def test_config_round_trips_through_a_dict():
    cfg = _cfg("sdn", seed=3, train_subset=40, data_root="/data").resolved()
    d = cfg.to_dict()
    json.dumps(d)
    assert TrainConfig.from_dict(d) == cfg
    with pytest.raises(SDNError, match=r"unknown TrainConfig fields.*'colour'"):
        TrainConfig.from_dict({**d, "colour": "red"})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"arch": "resnet50"}, r"unknown architecture 'resnet50'.*'resnet56'"),
        ({"dataset": "mnist"}, r"unknown dataset 'mnist'.*'digits'"),
        ({"mode": "joint"}, r"unknown mode 'joint'.*'ic_only'"),
        ({"epochs": 0}, "epochs 0"),
        ({"batch_size": 0}, "batch_size 0"),
        ({"lr": -0.1}, "lr -0.1"),
        ({"weight_decay": -1.0}, "weight_decay -1.0"),
        ({"milestones": [5, 3]}, r"milestones \[5, 3\]"),
        ({"gamma": 0.0}, "gamma 0.0"),
        ({"width": 0.0}, "width 0.0"),
        ({"width": 5}, "width 5"),
        ({"train_subset": 0}, "train_subset 0"),
        ({"val_size": -2}, "val_size -2"),
        ({"seed": -1}, "seed -1"),
        ({"device": "tpu"}, "device 'tpu'"),
        ({"amp": "yes"}, "amp 'yes'"),
    ],
)
def test_bad_config_values_name_the_field(kwargs, match):
    base = {"arch": "resnet56", "dataset": "cifar10", "mode": "cnn"}
    with pytest.raises(SDNError, match=match):
        TrainConfig(**{**base, **kwargs})


def test_tau_schedule():
    assert ic_coefficients(6) == [0.15, 0.30, 0.45, 0.60, 0.75, 0.90]
    assert ic_coefficients(5) == [0.15, 0.30, 0.45, 0.60, 0.75]  # MobileNet
    first = tau_weights(1, 100, 6)
    assert first == pytest.approx([0.01 + c / 100 for c in ic_coefficients(6)])
    assert tau_weights(100, 100, 6) == pytest.approx(ic_coefficients(6))
    assert tau_weights(50, 100, 6) == pytest.approx([0.085, 0.16, 0.235, 0.31, 0.385, 0.46])
    assert tau_weights(99, 100, 1) == pytest.approx([0.15])  # capped at C_i
    with pytest.raises(SDNError, match="epoch 0"):
        tau_weights(0, 10, 6)


# ---------------------------------------------------------------------------------------------
# The three modes


def _check_metrics(m: dict, exits: int, epoch: int = 1) -> None:
    assert m["epoch"] == epoch
    assert len(m["train_acc"]) == len(m["val_acc"]) == exits
    assert all(0.0 <= a <= 1.0 for a in m["train_acc"] + m["val_acc"])
    assert m["loss"] > 0 and m["seconds"] > 0 and m["images_per_second"] > 0


def test_cnn_and_sdn_epochs_report_every_output(tiny_digits):
    cnn = Trainer(_cfg("cnn"), tiny_digits)
    _check_metrics(cnn.train_epoch(), exits=1)
    assert cnn.done and len(cnn.history) == 1
    with pytest.raises(SDNError, match="complete"):
        cnn.train_epoch()

    sdn = Trainer(_cfg("sdn", epochs=2), tiny_digits)
    assert isinstance(sdn.model, SDN) and sdn.num_exits == 7
    assert sdn.loss_weights(1) == pytest.approx([*tau_weights(1, 2, 6), 1.0])
    _check_metrics(sdn.train_epoch(), exits=7)
    assert not sdn.done
    assert len(sdn.evaluate(tiny_digits.test)) == 7
    assert sdn.model.training  # evaluate() restores the training mode


def test_a_diverging_run_stops_with_an_error_naming_the_epoch_and_the_fix(tiny_digits):
    trainer = Trainer(_cfg("sdn", arch="vgg16", epochs=3, lr=1e6), tiny_digits)
    message = (
        r"diverged in epoch (\d) of vgg16 \(sdn\): the loss is (nan|-?inf); lower the learning"
    )
    with pytest.raises(TrainingDiverged, match=message) as caught:
        list(trainer.run())
    diverged_in = int(re.search(message, str(caught.value)).group(1))
    # The diverged epoch is not counted (so it is never checkpointed as if it had trained).
    assert trainer.epoch == len(trainer.history) == diverged_in - 1


def test_ic_only_trains_only_the_heads_and_keeps_the_backbone_in_eval(tiny_digits, cnn_checkpoint):
    trainer = Trainer(_cfg("ic_only", lr=0.01), tiny_digits, init_checkpoint=cnn_checkpoint)
    model = trainer.model
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    ics_before = {k: v.clone() for k, v in model.ics.state_dict().items()}
    saved = torch.load(cnn_checkpoint / "model.pt", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in backbone_before.items())  # the cnn's weights
    modes_seen = []
    hook = model.backbone.blocks[0].register_forward_pre_hook(
        lambda m, _a: modes_seen.append(m.training)
    )
    _check_metrics(trainer.train_epoch(), exits=7)
    hook.remove()
    assert modes_seen and not any(modes_seen)  # BN never in train mode, not even in training
    after = model.backbone.state_dict()
    assert all(torch.equal(after[k], v) for k, v in backbone_before.items())  # incl. BN stats
    assert not all(torch.equal(model.ics.state_dict()[k], v) for k, v in ics_before.items())
    assert not any(p.requires_grad for p in model.backbone.parameters())
    optimised = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert optimised == {id(p) for p in model.ics.parameters()}
    model.train()  # even a caller's train() cannot put the frozen backbone back in train mode
    model(tiny_digits.test.images[:2].float())
    assert not model.backbone.training


def test_ic_only_refuses_a_checkpoint_that_does_not_fit(tiny_digits, cnn_checkpoint, tmp_path):
    with pytest.raises(
        CheckpointError, match=r"arch 'resnet56' but this run needs arch 'mobilenet'"
    ):
        Trainer(_cfg("ic_only", arch="mobilenet"), tiny_digits, init_checkpoint=cnn_checkpoint)
    with pytest.raises(CheckpointError, match=r"width 0.125 but this run needs width 0.25"):
        Trainer(
            TrainConfig(arch="resnet56", dataset="digits", mode="ic_only", width=0.25, epochs=1),
            tiny_digits,
            init_checkpoint=cnn_checkpoint,
        )
    sdn_dir = Trainer(_cfg("sdn", arch="mobilenet"), tiny_digits).save(tmp_path / "sdn")
    with pytest.raises(CheckpointError, match=r"cnn-mode checkpoint.*mode 'sdn'"):
        Trainer(_cfg("ic_only", arch="mobilenet"), tiny_digits, init_checkpoint=sdn_dir)
    with pytest.raises(CheckpointError, match="nowhere"):
        Trainer(_cfg("ic_only"), tiny_digits, init_checkpoint=tmp_path / "nowhere")
    with pytest.raises(SDNError, match="needs init_checkpoint"):
        Trainer(_cfg("ic_only"), tiny_digits)


def test_channels_last_is_dropped_where_torch_crashes(tiny_digits):
    # ResNet-56 at width 0.125 has a 1x1 stride-2 shortcut with 2 input channels.
    assert not Trainer(_cfg("cnn"), tiny_digits).channels_last
    assert Trainer(_cfg("cnn", arch="vgg16"), tiny_digits).channels_last
    assert not Trainer(_cfg("cnn", arch="vgg16", channels_last=False), tiny_digits).channels_last


def test_config_must_match_the_data(tiny_digits):
    with pytest.raises(SDNError, match="'cifar10' does not match"):
        Trainer(TrainConfig(arch="resnet56", dataset="cifar10", mode="cnn", width=W), tiny_digits)


# ---------------------------------------------------------------------------------------------
# Checkpoints


def test_restored_run_ends_bit_identical_to_an_uninterrupted_one(tiny_digits, tmp_path):
    # WRN has dropout, so this also checks that the global RNG state is restored.
    cfg = _cfg("sdn", arch="wrn32_4", epochs=3, milestones=[2], seed=7)
    straight = Trainer(cfg, tiny_digits)
    for _ in straight.run():
        pass

    first = Trainer(cfg, tiny_digits)
    first.train_epoch()
    first.save(tmp_path / "ck")
    torch.manual_seed(12345)  # whatever happens in between must not matter
    resumed = Trainer.restore(tmp_path / "ck", tiny_digits)
    assert resumed.epoch == 1 and len(resumed.history) == 1
    while not resumed.done:
        resumed.train_epoch()
        resumed.save(tmp_path / "ck")  # overwriting a checkpoint is atomic and leaves no debris

    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h["val_acc"] for h in straight.history] == [h["val_acc"] for h in resumed.history]
    assert [h["loss"] for h in straight.history] == [h["loss"] for h in resumed.history]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    meta = json.loads((tmp_path / "ck" / "meta.json").read_text())
    assert (meta["epoch"], meta["kind"], meta["mode"], meta["done"]) == (3, "sdn", "sdn", True)
    assert meta["config"]["milestones"] == [2]
    for name in ("model.pt", "state.pt"):
        torch.load(tmp_path / "ck" / name, weights_only=True)


def test_restore_of_an_ic_only_run_needs_no_cnn(tiny_digits, cnn_checkpoint, tmp_path):
    trainer = Trainer(_cfg("ic_only", epochs=2), tiny_digits, init_checkpoint=cnn_checkpoint)
    trainer.train_epoch()
    trainer.save(tmp_path / "ic")
    back = Trainer.restore(tmp_path / "ic", tiny_digits, device="cpu")
    assert isinstance(back.model, SDN) and back.epoch == 1
    assert not any(p.requires_grad for p in back.model.backbone.parameters())
    assert back.evaluate(tiny_digits.val) == trainer.evaluate(tiny_digits.val)


def test_broken_checkpoints_raise_checkpoint_error_naming_the_file(tiny_digits, tmp_path):
    good = Trainer(_cfg("cnn", arch="mobilenet"), tiny_digits).save(tmp_path / "c")
    (good / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"model\.pt is corrupted"):
        Trainer.restore(good, tiny_digits)
    good = Trainer(_cfg("cnn", arch="mobilenet"), tiny_digits).save(tmp_path / "c")
    (good / "state.pt").unlink()
    with pytest.raises(CheckpointError, match=r"state\.pt is missing"):
        Trainer.restore(good, tiny_digits)
    # A state dict from another architecture does not load (strict loading, spec bug 9).
    other = Trainer(_cfg("cnn", arch="resnet56"), tiny_digits).save(tmp_path / "r")
    (good / "model.pt").write_bytes((other / "model.pt").read_bytes())
    with pytest.raises(CheckpointError, match="does not fit the model"):
        Trainer.restore(good, tiny_digits)
    (good / "meta.json").write_text("{broken")
    with pytest.raises(CheckpointError, match=r"meta\.json is unreadable"):
        Trainer.restore(good, tiny_digits)


# ---------------------------------------------------------------------------------------------
# The demo (python -m sdn)


def test_demo_runs_end_to_end_and_prints_the_tables(capsys):
    from sdn.__main__ import main

    assert main(["--epochs", "1", "--width", "0.125", "--threads", "1", "--batch-size", "128"]) == 0
    out = capsys.readouterr().out
    assert "  1/1" in out and "IC6" in out and "final" in out
    assert "early exit on test" in out and "chosen on val" in out
    assert "final-head test accuracy" in out


def test_demo_reports_bad_input_on_one_line(capsys):
    from sdn.__main__ import main

    assert main(["--arch", "resnet57"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown architecture 'resnet57'") and "\n" not in err
