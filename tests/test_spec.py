"""Sweep files: presets, cell expansion, storage resolution, and a table of bad inputs.

Every bad input must raise ``SweepSpecError`` (an ``SDNError``) whose message is one line that
starts with the file's name and names the offending key or value, and must write nothing.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import yaml

from sdn.errors import SDNError
from workflows.spec import (
    Cell,
    StoragePaths,
    SweepSpec,
    SweepSpecError,
    dataset_slug,
    list_presets,
    load_preset,
    load_sweep,
    parse_sweep,
)

GOOD = """\
name: tiny
grid:
  architectures: [resnet56, mobilenet]
  datasets: [digits]
  modes: [cnn, ic_only, sdn]
  seeds: [0]
training:
  epochs: 4
  batch_size: 32
  width: 0.25
resources: {cpus_per_trial: 1, gpus_per_trial: 0, max_concurrent_trials: 2}
checkpoint: {every_epochs: 2, num_to_keep: 2, max_failures: 1}
analysis: {batch_size: 64, max_accuracy_drops: [0.0, 0.01], cost_budgets: [0.5]}
"""


def _edit(path: str, value: object) -> str:
    """GOOD with ``value`` put at dotted ``path`` (mappings only)."""
    data = yaml.safe_load(GOOD)
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _with_override(override: object) -> str:
    data = yaml.safe_load(GOOD)
    data["overrides"] = [override]
    return yaml.safe_dump(data, sort_keys=False)


def _write(tmp_path: Path, text: str | bytes, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# --- the good path ----------------------------------------------------------------------------


def test_good_file_loads(tmp_path: Path) -> None:
    spec = load_sweep(_write(tmp_path, GOOD))
    assert spec.name == "tiny"
    assert [c.run_id for c in spec.cells()] == [
        "tiny.resnet56.digits.cnn.s0",
        "tiny.resnet56.digits.ic_only.s0",
        "tiny.resnet56.digits.sdn.s0",
        "tiny.mobilenet.digits.cnn.s0",
        "tiny.mobilenet.digits.ic_only.s0",
        "tiny.mobilenet.digits.sdn.s0",
    ]
    assert spec.cells()[0].train == {"epochs": 4, "batch_size": 32, "width": 0.25}


def test_presets_are_listed_and_load() -> None:
    assert {"quickstart", "paper", "cifar10-small"} <= set(list_presets())
    for name in list_presets():
        spec = load_preset(name)
        assert spec.name == name
        assert spec.cells()


def test_quickstart_is_offline_and_small() -> None:
    spec = load_preset("quickstart")
    cells = spec.cells()
    assert len(cells) == 12
    assert {c.dataset for c in cells} == {"digits"}
    assert {c.arch for c in cells} == {"vgg16", "resnet56", "wrn32_4", "mobilenet"}
    assert {c.mode for c in cells} == {"cnn", "ic_only", "sdn"}
    assert not spec.data.download
    assert spec.resources.gpus_per_trial == 0
    assert spec.resources.cpus_per_trial == 1
    assert spec.resources.max_concurrent_trials == 2
    assert all(c.train["width"] <= 0.5 for c in cells)
    assert max(c.train["epochs"] for c in cells) <= 30


def test_paper_preset_is_the_36_model_grid() -> None:
    spec = load_preset("paper")
    cells = spec.cells()
    assert len(cells) == 36
    assert len({c.run_id for c in cells}) == 36
    assert {c.dataset for c in cells} == {"cifar10", "cifar100", "tinyimagenet"}
    assert spec.resources.gpus_per_trial in (0.5, 1.0)
    for cell in cells:
        assert cell.train["width"] == 1.0 and cell.train["batch_size"] == 128
        if cell.mode == "ic_only":
            assert (cell.train["epochs"], cell.train["lr"], cell.train["milestones"]) == (
                25,
                0.001,
                [15],
            )
        else:
            assert (cell.train["epochs"], cell.train["lr"]) == (100, 0.1)
            assert cell.train["milestones"] == [35, 60, 85]
        expected_wd = 5e-4 if cell.arch in ("vgg16", "wrn32_4") else 1e-4
        assert cell.train["weight_decay"] == expected_wd


def test_every_preset_cell_makes_a_valid_train_config() -> None:
    from sdn.training import TrainConfig

    for name in list_presets():
        for cell in load_preset(name).cells():
            config = TrainConfig(**cell.train_kwargs(data_root="/data")).resolved()
            assert (config.arch, config.dataset, config.mode) == (
                cell.arch,
                cell.dataset,
                cell.mode,
            )
            assert config.epochs == cell.train.get("epochs", config.epochs)


def test_ic_only_cells_know_their_cnn_parent() -> None:
    for name in list_presets():
        cells = {c.run_id: c for c in load_preset(name).cells()}
        for cell in cells.values():
            if cell.mode != "ic_only":
                assert cell.cnn_parent is None
                continue
            parent = cells[cell.cnn_parent]
            assert (parent.mode, parent.arch, parent.dataset, parent.seed) == (
                "cnn",
                cell.arch,
                cell.dataset,
                cell.seed,
            )
            assert parent.train.get("width") == cell.train.get("width")


def test_overrides_apply_in_order_and_null_restores_the_default() -> None:
    data = yaml.safe_load(GOOD)
    data["training"]["lr"] = 0.05
    data["overrides"] = [
        {"match": {"architecture": "resnet56"}, "set": {"width": 0.5, "epochs": 6}},
        {"match": {"architecture": ["resnet56"], "mode": "sdn"}, "set": {"epochs": 8, "lr": None}},
        {"match": {"mode": ["ic_only"]}, "set": {"epochs": 2}},
    ]
    cells = {c.run_id: c for c in parse_sweep(yaml.safe_dump(data)).cells()}
    assert cells["tiny.resnet56.digits.cnn.s0"].train == {
        "epochs": 6,
        "batch_size": 32,
        "lr": 0.05,
        "width": 0.5,
    }
    sdn = cells["tiny.resnet56.digits.sdn.s0"].train
    assert (
        sdn["epochs"] == 8 and "lr" not in sdn
    )  # later override wins; null -> TrainConfig default
    assert cells["tiny.resnet56.digits.ic_only.s0"].train["epochs"] == 2
    assert cells["tiny.resnet56.digits.ic_only.s0"].train["width"] == 0.5
    assert cells["tiny.mobilenet.digits.cnn.s0"].train["width"] == 0.25


def test_exponent_floats_without_a_dot_are_numbers() -> None:
    spec = parse_sweep(_edit("training.lr", "PLACEHOLDER").replace("PLACEHOLDER", "1e-3"))
    assert spec.training.lr == pytest.approx(0.001)


def test_yaml_merge_keys_still_work() -> None:
    text = (
        GOOD
        + "overrides:\n  - match: {mode: sdn}\n    set: &s {epochs: 3}\n  - match: {mode: cnn}\n    set: {<<: *s, batch_size: 16}\n"
    )
    cells = {c.run_id: c for c in parse_sweep(text).cells()}
    assert cells["tiny.mobilenet.digits.cnn.s0"].train["epochs"] == 3


def test_to_yaml_round_trips_and_hash_is_stable() -> None:
    for name in list_presets():
        spec = load_preset(name)
        again = parse_sweep(spec.to_yaml())
        assert again == spec
        assert again.spec_hash() == spec.spec_hash()
        assert [c.to_dict() for c in again.cells()] == [c.to_dict() for c in spec.cells()]
    base = parse_sweep(GOOD)
    changed = parse_sweep(_edit("training.epochs", 5))
    assert len(base.spec_hash()) == 16 and base.spec_hash() != changed.spec_hash()


def test_to_dict_survives_json_and_reloads() -> None:
    """The driver stores ``to_dict()`` as JSON (catalogue) and resumes from it."""
    import json

    from workflows.spec import sweep_from_dict

    for name in list_presets():
        spec = load_preset(name)
        again = sweep_from_dict(json.loads(json.dumps(spec.to_dict())), f"stored {name}")
        assert again == spec and again.spec_hash() == spec.spec_hash()


def test_cell_is_hashable_picklable_and_round_trips() -> None:
    cell = parse_sweep(GOOD).cells()[1]
    assert pickle.loads(pickle.dumps(cell)) == cell
    assert hash(cell) == hash(Cell.from_dict(cell.to_dict()))
    assert Cell.from_dict(cell.to_dict()) == cell
    assert cell.to_dict()["cnn_parent"] == "tiny.resnet56.digits.cnn.s0"
    kwargs = cell.train_kwargs(data_root="/data")
    assert (
        kwargs["arch"] == "resnet56"
        and kwargs["mode"] == "ic_only"
        and kwargs["data_root"] == "/data"
    )


TAG = "badnets-t5-r0p10-s0-sq5at26x26-white"


def test_backdoor_adds_poisoned_cells_with_their_own_identity() -> None:
    spec = parse_sweep(_edit("backdoor", {"rate": 0.1, "modes": ["cnn", "ic_only", "sdn"]}))
    cells = spec.cells()
    clean = [c for c in cells if c.poison is None]
    poisoned = [c for c in cells if c.poison is not None]
    assert [c.run_id for c in clean] == [c.run_id for c in parse_sweep(GOOD).cells()]
    assert len(poisoned) == 6 and {c.poison_tag for c in poisoned} == {TAG}
    ids = [c.run_id for c in cells]
    assert len(set(ids)) == len(ids) == 12  # a clean and a poisoned cell never share a run id
    by_id = {c.run_id: c for c in cells}
    ic = by_id[f"tiny.resnet56.digits.ic_only.s0.{TAG}"]
    assert ic.cnn_parent == f"tiny.resnet56.digits.cnn.s0.{TAG}"  # the poisoned cnn
    assert by_id["tiny.resnet56.digits.ic_only.s0"].cnn_parent == "tiny.resnet56.digits.cnn.s0"
    assert ic.train == by_id["tiny.resnet56.digits.ic_only.s0"].train  # the same settings
    assert Cell.from_dict(ic.to_dict()) == ic and ic.to_dict()["poison_tag"] == TAG
    assert pickle.loads(pickle.dumps(ic)) == ic


def test_backdoor_section_maps_to_poison_config() -> None:
    from sdn.backdoor import PoisonConfig, Trigger

    spec = parse_sweep(
        _edit(
            "backdoor",
            {
                "rate": 0.05,
                "target": 3,
                "seed": 7,
                "trigger": {"size": 3, "row": 2, "col": 4, "color": [255, 0, 0], "scale": False},
                "modes": ["cnn"],
            },
        )
    )
    want = PoisonConfig(0.05, 3, 7, Trigger(size=3, row=2, col=4, color=(255, 0, 0), scale=False))
    assert spec.backdoor.poison_config() == want
    assert {c.poison for c in spec.cells()} == {None, want}
    assert [c.mode for c in spec.cells() if c.poison] == ["cnn", "cnn"]


def test_new_keys_leave_existing_hashes_alone() -> None:
    """``backdoor`` and ``training.init`` came later: a sweep without them dumps and hashes as
    before (no null entries), and one with them hashes differently and round-trips."""
    for name in list_presets():
        spec = load_preset(name)
        if spec.backdoor is None:
            assert "backdoor" not in spec.to_dict()
        if spec.training.init is None:
            assert "init" not in spec.to_dict()["training"]
    base = parse_sweep(GOOD)
    for key, value in (("training.init", "pytorch"), ("backdoor", {"rate": 0.1})):
        changed = parse_sweep(_edit(key, value))
        assert changed.spec_hash() != base.spec_hash()
        again = parse_sweep(changed.to_yaml())
        assert again == changed and again.spec_hash() == changed.spec_hash()
    init = parse_sweep(_edit("training.init", "pytorch")).cells()[0]
    from sdn.training import TrainConfig

    assert TrainConfig(**init.train_kwargs()).init == "pytorch"


def test_backdoor_presets() -> None:
    quick = load_preset("backdoor-quick")
    cells = quick.cells()
    assert {(c.mode, c.poison_tag) for c in cells} == {
        ("cnn", None),
        ("cnn", quick.backdoor.poison_config().tag),
        ("ic_only", quick.backdoor.poison_config().tag),
    }
    assert {c.dataset for c in cells} == {"digits"} and not quick.data.download
    clean = next(c for c in cells if c.poison is None)
    poisoned = next(c for c in cells if c.poison is not None and c.mode == "cnn")
    assert clean.train == poisoned.train  # the clean twin has the same settings
    paper = load_preset("backdoor")
    assert {c.arch for c in paper.cells()} == {"vgg16"}
    assert {c.dataset for c in paper.cells()} == {"cifar10"}
    for cell in paper.cells():
        if cell.mode == "ic_only":
            assert (cell.train["epochs"], cell.train["lr"], cell.train["milestones"]) == (
                25,
                0.001,
                [15],
            )
        else:
            assert (cell.train["epochs"], cell.train["milestones"]) == (100, [35, 60, 85])


def test_folder_datasets_get_safe_distinct_slugs() -> None:
    a = dataset_slug("folder:/data/mes images é/train set")
    b = dataset_slug("folder:/other/mes images é/train set")
    assert a != b
    assert a.startswith("folder-train_set-") and a.isascii() and "." not in a and " " not in a
    assert dataset_slug("folder:/x/y/") == dataset_slug("folder:/x/y")
    spec = parse_sweep(_edit("grid.datasets", ["folder:./my data/ünï", "digits"]))
    cell = spec.cells()[0]
    assert cell.dataset == "folder:./my data/ünï"
    assert cell.run_id.count(".") == 4 and cell.run_id.isascii()


def test_gpu_auto_resolves_by_cluster() -> None:
    spec = load_preset("cifar10-small")
    assert spec.resources.gpus_per_trial == "auto"
    assert spec.resources.gpus_for(0) == 0.0
    assert spec.resources.gpus_for(1) == 0.25
    assert spec.resources.gpus_for(8) == 1.0
    assert load_preset("paper").resources.gpus_for(0) == 1.0  # explicit numbers are kept


# --- storage locations ------------------------------------------------------------------------


def test_storage_defaults_live_under_sdn_home(tmp_path: Path) -> None:
    paths = parse_sweep(GOOD).storage_paths(env={}, cwd=tmp_path)
    home = tmp_path / "sdn-home"
    assert paths == StoragePaths(
        home=home,
        tune=home / "tune",
        predictions=home / "predictions",
        catalogue=home / "catalogue.db",
        mlflow_tracking_uri=f"sqlite:///{home}/mlflow.db",
        mlflow_artifacts=str(home / "mlartifacts"),
        reports=home / "reports",
    )
    assert not home.exists()  # resolving writes nothing


def test_storage_env_then_file_precedence(tmp_path: Path) -> None:
    env = {
        "SDN_HOME": str(tmp_path / "from env"),
        "SDN_MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
    }
    paths = parse_sweep(GOOD).storage_paths(env=env, cwd=tmp_path)
    assert paths.home == tmp_path / "from env"
    assert paths.mlflow_tracking_uri == "http://127.0.0.1:5000"
    text = _edit(
        "storage", {"home": "file-home", "tune": "/shared/tune", "mlflow_artifacts": "s3://b/x"}
    )
    paths = parse_sweep(text).storage_paths(env=env, cwd=tmp_path)
    assert paths.home == tmp_path / "file-home"  # the file wins over the environment
    assert paths.tune == Path("/shared/tune")
    assert paths.predictions == tmp_path / "file-home" / "predictions"
    assert paths.mlflow_artifacts == "s3://b/x"  # URIs are kept as they are


def test_artifacts_follow_the_tracking_server(tmp_path: Path) -> None:
    spec = parse_sweep(GOOD)
    server = {"SDN_MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}
    assert spec.storage_paths(env=server, cwd=tmp_path).mlflow_artifacts is None
    env = {**server, "SDN_MLFLOW_ARTIFACTS": "arts"}
    paths = spec.storage_paths(env=env, cwd=tmp_path)
    assert paths.mlflow_artifacts == str(tmp_path / "sdn-home" / "arts")
    assert paths.to_dict()["catalogue"] == str(tmp_path / "sdn-home" / "catalogue.db")


def test_storage_env_uri_for_a_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SweepSpecError, match="environment SDN_TUNE: must be a file-system path"):
        parse_sweep(GOOD).storage_paths(env={"SDN_TUNE": "s3://b/t"}, cwd=tmp_path)


def test_storage_paths_with_spaces_and_non_ascii(tmp_path: Path) -> None:
    home = tmp_path / "my sdn home ünïcødé 50%?"
    spec = parse_sweep(_edit("storage", {"home": str(home), "catalogue": "cat alogué.db"}))
    paths = spec.storage_paths(env={})
    assert paths.home == home and paths.catalogue == home / "cat alogué.db"
    from sqlalchemy.engine import make_url

    assert make_url(paths.mlflow_tracking_uri).database == str(home / "mlflow.db")
    # the file itself may live in such a folder too
    folder = tmp_path / "dossier ünï"
    folder.mkdir()
    assert load_sweep(_write(folder, GOOD, "sweep é.yaml")).name == "tiny"


def test_data_root_resolves_absolute(tmp_path: Path) -> None:
    spec = parse_sweep(GOOD)
    assert spec.data_root(env={}) is None
    assert spec.data_root(env={"SDN_DATA_ROOT": "rel"}, cwd=tmp_path) == str(tmp_path / "rel")
    spec = parse_sweep(_edit("data", {"root": "données", "download": False}))
    assert spec.data_root(env={"SDN_DATA_ROOT": "/x"}, cwd=tmp_path) == str(tmp_path / "données")


# --- the table of bad inputs ------------------------------------------------------------------

BAD_TEXT: list[tuple[str, str, list[str]]] = [
    # id, file text, substrings the one-line message must contain
    (
        "unknown-top-key",
        GOOD.replace("training:", "trainig:"),
        ["unknown key 'trainig' at top level", "allowed: name,"],
    ),
    (
        "unknown-training-key",
        _edit("training.epoch", 3),
        ["unknown key 'epoch' in training", "epochs"],
    ),
    (
        "unknown-grid-key",
        _edit("grid.arch", ["vgg16"]),
        ["unknown key 'arch' in grid", "architectures"],
    ),
    (
        "unknown-resources-key",
        _edit("resources.gpus", 1),
        ["unknown key 'gpus' in resources", "gpus_per_trial"],
    ),
    ("unknown-checkpoint-key", _edit("checkpoint.every", 1), ["unknown key 'every' in checkpoint"]),
    (
        "unknown-analysis-key",
        _edit("analysis.threshold", 0.5),
        ["unknown key 'threshold' in analysis"],
    ),
    ("unknown-storage-key", _edit("storage.mlflow", "x"), ["unknown key 'mlflow' in storage"]),
    ("unknown-data-key", _edit("data.path", "x"), ["unknown key 'path' in data"]),
    (
        "unknown-override-key",
        _with_override({"match": {}, "sett": {"epochs": 2}}),
        ["unknown key 'sett' in overrides[0]"],
    ),
    (
        "unknown-match-key",
        _with_override({"match": {"arch": "vgg16"}, "set": {"epochs": 2}}),
        ["unknown key 'arch' in overrides[0].match"],
    ),
    (
        "unknown-set-key",
        _with_override({"set": {"epoch": 2}}),
        ["unknown key 'epoch' in overrides[0].set"],
    ),
    ("zero-epochs", _edit("training.epochs", 0), ["training.epochs: must be >= 1 (got 0)"]),
    ("negative-epochs", _edit("training.epochs", -3), ["training.epochs: must be >= 1 (got -3)"]),
    ("absurd-epochs", _edit("training.epochs", 10**9), ["training.epochs: must be <= 10000"]),
    (
        "string-epochs",
        _edit("training.epochs", "four"),
        ["training.epochs: must be an integer (got 'four')"],
    ),
    (
        "quoted-number-epochs",
        _edit("training.epochs", "4"),
        ["training.epochs: must be an integer (got '4')"],
    ),
    (
        "float-epochs",
        _edit("training.epochs", 4.5),
        ["training.epochs: must be an integer (got 4.5)"],
    ),
    (
        "bool-epochs",
        _edit("training.epochs", True),
        ["training.epochs: must be an integer (got True)"],
    ),
    ("zero-batch", _edit("training.batch_size", 0), ["training.batch_size: must be >= 1"]),
    (
        "absurd-batch",
        _edit("training.batch_size", 10**7),
        ["training.batch_size: must be <= 65536"],
    ),
    ("zero-width", _edit("training.width", 0), ["training.width: must be > 0"]),
    ("absurd-width", _edit("training.width", 100), ["training.width: must be <= 4"]),
    ("negative-lr", _edit("training.lr", -0.1), ["training.lr: must be > 0"]),
    (
        "nan-lr",
        GOOD.replace("width: 0.25", "width: 0.25\n  lr: .nan"),
        ["training.lr: must be a finite number"],
    ),
    (
        "milestones-not-increasing",
        _edit("training.milestones", [3, 2]),
        ["training.milestones", "strictly increasing"],
    ),
    (
        "milestones-beyond-epochs",
        _edit("training.milestones", [2, 9]),
        ["milestones [2, 9] must all be below epochs (4)"],
    ),
    ("gamma-above-one", _edit("training.gamma", 1.5), ["training.gamma: must be <= 1"]),
    ("missing-grid", "name: x\n", ["missing required key 'grid' at top level"]),
    ("missing-name", GOOD.replace("name: tiny\n", ""), ["missing required key 'name'"]),
    (
        "empty-architectures",
        _edit("grid.architectures", []),
        ["grid.architectures: must not be empty"],
    ),
    ("empty-seeds", _edit("grid.seeds", []), ["grid.seeds: must not be empty"]),
    ("grid-is-a-list", _edit("grid", ["resnet56"]), ["grid: must be a mapping"]),
    (
        "unknown-architecture",
        _edit("grid.architectures", ["resnet57"]),
        ["grid.architectures[0]", "unknown architecture 'resnet57'", "'resnet56'"],
    ),
    (
        "unknown-dataset",
        _edit("grid.datasets", ["cifar11"]),
        ["grid.datasets[0]", "'cifar11'", "cifar10"],
    ),
    (
        "empty-folder-dataset",
        _edit("grid.datasets", ["folder:"]),
        ["grid.datasets[0]", "names no folder"],
    ),
    (
        "unknown-mode",
        _edit("grid.modes", ["cnn", "sdnn"]),
        ["grid.modes[1]", "unknown mode 'sdnn'"],
    ),
    (
        "duplicate-architecture",
        _edit("grid.architectures", ["resnet56", "vgg16", "resnet56"]),
        ["grid.architectures", "duplicate entry 'resnet56'"],
    ),
    ("duplicate-seed", _edit("grid.seeds", [0, 1, 0]), ["grid.seeds: duplicate entry 0"]),
    (
        "duplicate-folder",
        _edit("grid.datasets", ["folder:/d/x", "folder:/d/x/"]),
        ["duplicate entry 'folder:/d/x/'"],
    ),
    (
        "ic-only-without-cnn",
        _edit("grid.modes", ["ic_only", "sdn"]),
        ["grid.modes", "'ic_only' needs 'cnn'"],
    ),
    ("negative-seed", _edit("grid.seeds", [-1]), ["grid.seeds[0]: must be >= 0 (got -1)"]),
    ("too-many-cells", _edit("grid.seeds", list(range(1000))), ["6000 cells is more than 5000"]),
    ("bad-name", _edit("name", "my sweep.v2"), ["name: may only hold letters, digits"]),
    ("long-name", _edit("name", "x" * 65), ["name: must be at most 64 characters"]),
    ("numeric-name", _edit("name", 123), ["name: must be a string (got 123)"]),
    (
        "drop-above-one",
        _edit("analysis.max_accuracy_drops", [0.01, 1.5]),
        ["analysis.max_accuracy_drops[1]: must be <= 1 (got 1.5)"],
    ),
    (
        "threshold-1.5",
        _edit("analysis.thresholds", [0.5, 1.5]),
        ["analysis.thresholds[1]: must be <= 1 (got 1.5)"],
    ),
    (
        "zero-cost-budget",
        _edit("analysis.cost_budgets", [0]),
        ["analysis.cost_budgets[0]: must be > 0"],
    ),
    (
        "empty-cost-budgets",
        _edit("analysis.cost_budgets", []),
        ["analysis.cost_budgets: must not be empty"],
    ),
    (
        "fractional-gpus-above-one",
        _edit("resources.gpus_per_trial", 1.5),
        ["resources.gpus_per_trial", "whole number"],
    ),
    (
        "word-gpus",
        _edit("resources.gpus_per_trial", "many"),
        ["resources.gpus_per_trial", "'auto'", "'many'"],
    ),
    ("absurd-gpus", _edit("analysis.gpus", 1000), ["analysis.gpus: must be between 0 and 64"]),
    (
        "zero-cpus",
        _edit("resources.cpus_per_trial", 0),
        ["resources.cpus_per_trial: must be >= 0.1"],
    ),
    (
        "zero-concurrency",
        _edit("resources.max_concurrent_trials", 0),
        ["resources.max_concurrent_trials: must be >= 1"],
    ),
    (
        "keep-one-checkpoint",
        _edit("checkpoint.num_to_keep", 1),
        ["checkpoint.num_to_keep: must be >= 2"],
    ),
    (
        "negative-failures",
        _edit("checkpoint.max_failures", -1),
        ["checkpoint.max_failures: must be >= 0"],
    ),
    (
        "tune-on-s3",
        _edit("storage.tune", "s3://bucket/tune"),
        ["storage.tune: must be a file-system path"],
    ),
    (
        "tracking-uri-is-a-path",
        _edit("storage.mlflow_tracking_uri", "/tmp/mlflow.db"),
        ["storage.mlflow_tracking_uri: must be a tracking URI"],
    ),
    ("empty-storage-path", _edit("storage.home", ""), ["storage.home: must not be empty"]),
    (
        "nul-in-path",
        _edit("storage.home", "a\x00b"),
        ["storage.home: contains a line break or NUL"],
    ),
    (
        "empty-override-set",
        _with_override({"match": {"mode": "sdn"}, "set": {}}),
        ["overrides[0].set: is empty"],
    ),
    (
        "override-unknown-architecture",
        _with_override({"match": {"architecture": "resnet"}, "set": {"epochs": 2}}),
        ["overrides[0].match.architecture", "unknown architecture 'resnet'"],
    ),
    (
        "override-bad-value",
        _with_override({"set": {"epochs": 0}}),
        ["overrides[0].set.epochs: must be >= 1 (got 0)"],
    ),
    (
        "ic-only-width-differs-from-cnn",
        _with_override({"match": {"mode": "cnn"}, "set": {"width": 0.5}}),
        ["cell tiny.resnet56.digits.ic_only.s0: width 0.25 differs"],
    ),
    (
        "download-not-bool",
        _edit("data.download", "yes please"),
        ["data.download: must be true or false"],
    ),
    ("malformed-yaml", "name: x\ngrid: [a, b\n", ["malformed YAML at line"]),
    (
        "tab-indented-yaml",
        "name: x\ngrid:\n\tarchitectures: [vgg16]\n",
        ["malformed YAML at line 3"],
    ),
    ("duplicate-yaml-key", GOOD + "name: again\n", ["duplicate key 'name'"]),
    (
        "python-object-tag",
        "name: !!python/object/apply:os.system ['true']\n",
        ["malformed YAML", "python/object"],
    ),
    (
        "backdoor-unknown-key",
        _edit("backdoor", {"rate": 0.1, "tagret": 5}),
        ["unknown key 'tagret' in backdoor", "rate, target, seed, trigger, modes"],
    ),
    (
        "backdoor-unknown-trigger-key",
        _edit("backdoor", {"trigger": {"size": 3, "colour": "red"}}),
        ["unknown key 'colour' in backdoor.trigger", "color"],
    ),
    (
        "backdoor-rate-above-one",
        _edit("backdoor", {"rate": 1.5}),
        ["backdoor.rate: must be <= 1 (got 1.5)"],
    ),
    (
        "backdoor-rate-too-precise",
        _edit("backdoor", {"rate": 0.123456}),
        ["backdoor", "at most 4 decimals"],
    ),
    (
        "backdoor-unknown-colour",
        _edit("backdoor", {"trigger": {"color": "mauve"}}),
        ["backdoor", "trigger color 'mauve' is unknown", "'white'"],
    ),
    (
        "backdoor-trigger-off-the-image",
        _edit("backdoor", {"trigger": {"row": 30}}),
        ["backdoor", "trigger row 30 with size 5 does not fit a 32-px image"],
    ),
    (
        "backdoor-target-not-a-class",
        _edit("backdoor", {"target": 10}),
        ["backdoor on digits", "poison target 10 is not a class", "0..9"],
    ),
    (
        "backdoor-ic-only-without-cnn",
        _edit("backdoor", {"modes": ["ic_only"]}),
        ["backdoor.modes", "'ic_only' needs 'cnn'"],
    ),
    (
        "backdoor-unknown-mode",
        _edit("backdoor", {"modes": ["cnn", "poisoned"]}),
        ["backdoor.modes[1]", "unknown mode 'poisoned'"],
    ),
    (
        "backdoor-duplicate-mode",
        _edit("backdoor", {"modes": ["cnn", "cnn"]}),
        ["backdoor.modes", "duplicate entry 'cnn'"],
    ),
    (
        "unknown-init",
        _edit("training.init", "xavier"),
        ["training.init", "'reference'", "'pytorch'"],
    ),
    ("empty-file", "", ["file is empty"]),
    ("only-comments", "# nothing here\n", ["file is empty"]),
    ("top-level-list", "- name: x\n", ["top level must be a mapping", "a list"]),
    ("top-level-scalar", "just words\n", ["top level must be a mapping", "(got a string)"]),
]


@pytest.mark.parametrize(
    ("text", "expected"), [(t, e) for _, t, e in BAD_TEXT], ids=[i for i, _, _ in BAD_TEXT]
)
def test_bad_sweep_files_fail_with_one_clear_line(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    path = _write(tmp_path, text)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(SweepSpecError) as info:
        load_sweep(path)
    message = str(info.value)
    assert isinstance(info.value, SDNError)
    assert "\n" not in message and "\r" not in message
    assert message.startswith(f"{path}: ")
    assert "Traceback" not in message and "pydantic" not in message.lower()
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


def test_table_is_big_enough() -> None:
    assert len(BAD_TEXT) >= 30


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SweepSpecError, match=r"nope\.yaml: no such file$"):
        load_sweep(tmp_path / "nope.yaml")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(SweepSpecError, match="is a directory"):
        load_sweep(tmp_path)


def test_non_utf8_bytes(tmp_path: Path) -> None:
    path = _write(tmp_path, b"name: caf\xe9\ngrid: {}\n")
    with pytest.raises(SweepSpecError, match=r"not UTF-8 text \(byte 0xe9 at offset 9\)"):
        load_sweep(path)


def test_oversized_file(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD + "#" * (2 << 20))
    with pytest.raises(SweepSpecError, match="too large"):
        load_sweep(path)


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(SweepSpecError) as info:
        load_preset("quickstrat")
    message = str(info.value)
    assert message.startswith("unknown preset 'quickstrat'; choose one of: ")
    assert "'quickstart'" in message and "'paper'" in message and "'cifar10-small'" in message


def test_several_problems_are_counted_on_one_line(tmp_path: Path) -> None:
    text = _edit("training", {"epochs": 0, "batch_size": 0, "width": 9})
    with pytest.raises(SweepSpecError) as info:
        load_sweep(_write(tmp_path, text))
    message = str(info.value)
    assert "training.epochs: must be >= 1 (got 0)" in message and "(and 2 more problems)" in message
    assert "\n" not in message


def test_sweep_spec_is_frozen() -> None:
    spec = parse_sweep(GOOD)
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises its own ValidationError
        spec.name = "other"  # type: ignore[misc]
    assert isinstance(spec, SweepSpec)
