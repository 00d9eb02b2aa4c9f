"""The MLflow model registry against a real SQLite-backed MLflow store in a temporary directory.

One tiny real SDN (ResNet-56 at 1/8 width, 32 px) is logged into a real run once per module; a
second run adds version 2. MLflow is slow to import and torch.export takes seconds per model, so
everything expensive lives in module-scoped fixtures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from sdn.models import SDN, build_sdn, model_outputs
from storage.errors import StorageError
from storage.model_refs import parse_ref, registered_model_name, sanitise_dataset

pytestmark = pytest.mark.integration

TAGS = {"architecture": "resnet56", "dataset": "digits", "mode": "sdn", "seed": 0, "sweep": "t"}
NAME = "sdn-resnet56-digits-sdn"


def tiny_sdn(seed: int) -> SDN:
    torch.manual_seed(seed)
    model = build_sdn("resnet56", num_classes=10, image_size=32, width=0.125)
    # Non-trivial BatchNorm statistics, so a rebuilt module that ignored buffers would differ.
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 3, 32, 32))
    return model.eval()


def all_exits(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return model_outputs(model, x)


# ---- names and references (no MLflow needed) ------------------------------------------------


def test_registered_model_name_and_sanitising() -> None:
    assert registered_model_name("resnet56", "cifar10", "sdn") == "sdn-resnet56-cifar10-sdn"
    assert registered_model_name("wrn32_4", "digits", "ic_only") == "sdn-wrn32_4-digits-ic_only"
    folder = registered_model_name("vgg16", "folder:/data/My Set", "cnn")
    assert folder.startswith("sdn-vgg16-folder-data-My-Set-") and folder.endswith("-cnn")
    assert "/" not in folder and ":" not in folder
    # Two paths that sanitise alike still get distinct names (hash of the original appended).
    assert sanitise_dataset("folder:/a/b") != sanitise_dataset("folder:/a-b")
    assert sanitise_dataset("folder:/a/b") == sanitise_dataset("folder:/a/b")
    with pytest.raises(StorageError, match="unknown training mode 'fast'"):
        registered_model_name("resnet56", "digits", "fast")
    # A model trained on poisoned data never shares a name with a clean one.
    tag = "badnets-t5-r0p10-s0-sq5at26x26-white"
    poisoned = registered_model_name("resnet56", "digits", "cnn", tag)
    assert poisoned == f"sdn-resnet56-digits-cnn-{tag}"
    assert registered_model_name("resnet56", "digits", "cnn", "") == "sdn-resnet56-digits-cnn"
    with pytest.raises(StorageError, match="poison tag"):
        registered_model_name("resnet56", "digits", "cnn", "bad tag/x")


@pytest.mark.parametrize(
    ("ref", "kind", "name", "value"),
    [
        ("m@champion", "alias", "m", "champion"),
        ("m/3", "version", "m", "3"),
        ("models:/m/3", "version", "m", "3"),
        ("models:/m@latest", "alias", "m", "latest"),
        ("runs:/abc123", "run", None, "abc123"),
        ("runs:/abc123/exported", "run", None, "abc123"),
        ("abc123", "bare", None, "abc123"),
    ],
)
def test_parse_ref(ref: str, kind: str, name: str | None, value: str) -> None:
    parsed = parse_ref(ref)
    assert (parsed.kind, parsed.name, parsed.value) == (kind, name, value)


@pytest.mark.parametrize("ref", ["", "m/x", "m@", "m:3", "models:/m", "bad name/1", "runs:/a'b"])
def test_parse_ref_rejects_malformed(ref: str) -> None:
    with pytest.raises(StorageError) as err:
        parse_ref(ref)
    assert "\n" not in str(err.value)


# ---- a real MLflow store ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """A Registry on sqlite in tmp, with the working directory moved to an empty folder.

    The folder lets the last test prove MLflow never fell back to a ./mlflow.db of its own.
    """
    from storage.registry import Registry

    root = tmp_path_factory.mktemp("mlflow")
    workdir = tmp_path_factory.mktemp("cwd")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        uri = f"sqlite:///{root}/mlflow.db"
        registry = Registry(uri)
        experiment = registry.client.create_experiment(
            "registry-test", artifact_location=str(root / "artifacts")
        )
        yield SimpleNamespace(
            registry=registry, uri=uri, root=root, workdir=workdir, experiment=experiment
        )


@pytest.fixture(scope="module")
def first(store):
    """Version 1: a tiny SDN logged in run 1."""
    model = tiny_sdn(0)
    run = store.registry.client.create_run(store.experiment)
    ref = store.registry.log_model(model, run_id=run.info.run_id, tags=TAGS)
    return SimpleNamespace(model=model, run_id=run.info.run_id, ref=ref)


PLAIN_USER_SCRIPT = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("sdn", "storage", "workflows"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import numpy as np, torch, mlflow.pyfunc
x = np.load("x.npy")
model = mlflow.pyfunc.load_model(sys.argv[1])
np.save("pyfunc_out.npy", np.asarray(model.predict(x)))
module = model.get_raw_model()  # the module mlflow.pytorch.load_model gives for this archive
assert isinstance(module, torch.nn.Module), type(module)
np.save("torch_out.npy", module(torch.from_numpy(x)).detach().numpy())
"""


@pytest.fixture(scope="module")
def plain_user(store, first, tmp_path_factory: pytest.TempPathFactory):
    """Start, in the background, a fresh interpreter that cannot import sdn/storage/workflows
    and loads version 1 by its ``models:/`` URI with pyfunc.

    It runs while the other tests do (importing MLflow and deserialising the pt2 graph take many
    seconds); ``test_plain_mlflow_loads_it_without_this_project`` collects the result.
    """
    folder = tmp_path_factory.mktemp("plain-user")
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32), dtype=np.float32)
    np.save(folder / "x.npy", x)
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.uri, "PYTHONPATH": ""}
    with (folder / "log.txt").open("w") as log:  # a file, not a pipe nobody drains meanwhile
        proc = subprocess.Popen(
            [sys.executable, "-c", PLAIN_USER_SCRIPT, f"models:/{NAME}/1"],
            cwd=folder,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    yield SimpleNamespace(proc=proc, folder=folder, x=x)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def second(store, first):
    """Version 2: other weights logged in run 2 under the same name."""
    model = tiny_sdn(1)
    run = store.registry.client.create_run(store.experiment)
    ref = store.registry.log_model(model, run_id=run.info.run_id, tags={**TAGS, "seed": 1})
    return SimpleNamespace(model=model, run_id=run.info.run_id, ref=ref)


def versions_of(registry, name: str) -> list[int]:
    frame = registry.list_models()
    return sorted(frame.loc[frame["name"] == name, "version"].tolist())


def test_log_registers_version_with_tags(store, first, plain_user) -> None:
    # plain_user: starts the background plain-MLflow check early, so it overlaps the others.
    ref = first.ref
    assert (ref.name, ref.version, ref.run_id) == (NAME, 1, first.run_id)
    assert ref.model_uri == f"models:/{NAME}/1"
    frame = store.registry.list_models()
    assert list(frame.columns) == ["name", "version", "aliases", "tags", "run_id", "created"]
    row = frame[(frame["name"] == NAME) & (frame["version"] == 1)].iloc[0]
    assert row["run_id"] == first.run_id
    for key in ("architecture", "dataset", "mode", "seed", "sweep"):
        assert row["tags"][key] == str(TAGS[key])
    # The real module's weights and config are run artifacts.
    files = {
        f.path for f in store.registry.client.list_artifacts(first.run_id, f"sdn_model/{NAME}")
    }
    assert files == {f"sdn_model/{NAME}/state_dict.pt", f"sdn_model/{NAME}/model_config.json"}


def test_resolve_by_alias_version_and_run_id(store, first) -> None:
    registry = store.registry
    latest = max(versions_of(registry, NAME))
    assert registry.resolve(f"{NAME}@latest").version == latest
    assert registry.resolve(f"models:/{NAME}@latest").version == latest
    assert registry.resolve(NAME).version == latest
    for ref in (f"{NAME}/1", f"models:/{NAME}/1", first.run_id, f"runs:/{first.run_id}"):
        assert registry.resolve(ref) == first.ref, ref


def test_rebuilt_module_equals_original(store, first) -> None:
    module = store.registry.load_module(f"{NAME}/1")
    assert isinstance(module, SDN) and not module.training
    assert module.config == first.model.config
    x = torch.randn(5, 3, 32, 32)
    for got, want in zip(all_exits(module, x), all_exits(first.model, x), strict=True):
        assert torch.equal(got, want)
    preds, exits = module.early_exit(x, threshold=0.5)
    want_preds, want_exits = first.model.early_exit(x, threshold=0.5)
    assert torch.equal(preds, want_preds) and torch.equal(exits, want_exits)


def test_exported_model_returns_all_exits(store, first) -> None:
    exported = store.registry.load_exported(first.run_id)
    x = torch.randn(3, 3, 32, 32)  # another batch size than the export example: dynamic batch
    with torch.no_grad():
        got = exported(x)
    want = torch.stack(all_exits(first.model, x), dim=1)
    assert got.shape == (3, first.model.num_exits, 10)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_relogging_same_run_adds_no_version(store, first) -> None:
    before = versions_of(store.registry, NAME)
    again = store.registry.log_model(first.model, run_id=first.run_id, tags=TAGS)
    assert again == first.ref
    assert versions_of(store.registry, NAME) == before


def test_second_run_adds_version_2_and_moves_latest(store, first, second) -> None:
    registry = store.registry
    assert (second.ref.version, second.ref.run_id) == (2, second.run_id)
    assert registry.resolve(f"{NAME}@latest") == second.ref
    assert registry.resolve(f"{NAME}/1") == first.ref
    assert registry.resolve(second.run_id) == second.ref
    frame = registry.list_models().set_index("version")
    assert "latest" in frame.loc[2, "aliases"] and "latest" not in frame.loc[1, "aliases"]
    x = torch.randn(2, 3, 32, 32)
    module = registry.load_module(f"{NAME}@latest")
    assert torch.equal(all_exits(module, x)[-1], all_exits(second.model, x)[-1])


def test_set_alias_champion(store, first, second) -> None:
    registry = store.registry
    assert registry.set_alias(NAME, "champion", 1) == first.ref
    assert registry.resolve(f"{NAME}@champion") == first.ref
    assert registry.resolve(f"models:/{NAME}@champion") == first.ref
    frame = registry.list_models().set_index("version")
    assert frame.loc[1, "aliases"] == ["champion"]
    registry.set_alias(NAME, "champion", 2)
    assert registry.resolve(f"{NAME}@champion") == second.ref
    with pytest.raises(StorageError, match="reserved"):
        registry.set_alias(NAME, "latest", 1)
    with pytest.raises(StorageError, match="has no version 99"):
        registry.set_alias(NAME, "champion", 99)


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("sdn-nope-digits-sdn@latest", "unknown registered model 'sdn-nope-digits-sdn'; known"),
        ("sdn-nope-digits-sdn/1", "unknown registered model 'sdn-nope-digits-sdn'"),
        (f"{NAME}/99", f"registered model '{NAME}' has no version 99; versions: 1"),
        (f"{NAME}@nope", f"registered model '{NAME}' has no alias 'nope'; aliases: "),
        ("runs:/0123456789abcdef", "no registered model version comes from run '0123456789abcdef'"),
        ("no-such-model-or-run", "no registered model version comes from 'no-such-model-or-run'"),
        (f"{NAME}:1", "write name/3 for a version"),
    ],
)
def test_bad_references_are_one_line_errors(store, first, ref: str, expected: str) -> None:
    with pytest.raises(StorageError) as err:
        store.registry.resolve(ref)
    message = str(err.value)
    assert expected in message and "\n" not in message
    if "unknown registered model" in expected:
        assert NAME in message  # the known names are listed


def test_log_model_bad_input(store, first) -> None:
    registry = store.registry
    model = first.model
    with pytest.raises(StorageError, match="unknown MLflow run 'f00d'"):
        registry.log_model(model, run_id="f00d", tags=TAGS)
    with pytest.raises(StorageError, match=r"tags lack \['mode'\]"):
        registry.log_model(model, run_id=first.run_id, tags={"dataset": "digits"})
    with pytest.raises(StorageError, match="invalid alias 'v3'"):
        registry.log_model(model, run_id=first.run_id, tags=TAGS, aliases=("v3",))
    with pytest.raises(StorageError, match="no sdn model config"):
        registry.log_model(torch.nn.Linear(2, 2), run_id=first.run_id, tags=TAGS)


def test_tampered_weights_are_refused_not_unpickled(store, first, tmp_path: Path) -> None:
    """A pickle that would run code on load fails under weights_only instead of running."""
    from storage.model_export import read_weights

    folder = tmp_path / "w"
    folder.mkdir()
    (folder / "model_config.json").write_text(json.dumps(first.model.config))
    marker = tmp_path / "pwned"
    torch.save({"x": Exploit(str(marker))}, folder / "state_dict.pt")
    with pytest.raises(StorageError, match="cannot read the model weights"):
        read_weights(folder, "tampered")
    assert not marker.exists()


class Exploit:
    """Unpickling this would create a file; weights_only must refuse it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_ensure_tracking_store_rejects_non_database(tmp_path: Path) -> None:
    from storage.mlflow_setup import ensure_tracking_store

    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a sqlite database" * 100)
    with pytest.raises(StorageError) as err:
        ensure_tracking_store(f"sqlite:///{junk}")
    assert f"sqlite:///{junk}" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(StorageError, match="is a directory"):
        ensure_tracking_store(f"sqlite:///{tmp_path}")


def test_plain_mlflow_loads_it_without_this_project(first, plain_user) -> None:
    """pyfunc (numpy in, numpy out) and the raw torch module agree with the original's exits.

    ``mlflow.pytorch.load_model`` itself is what ``Registry.load_exported`` calls (tested above);
    loading once here keeps the file fast.
    """
    returncode = plain_user.proc.wait(timeout=300)
    assert returncode == 0, (plain_user.folder / "log.txt").read_text()[-3000:]
    x = torch.from_numpy(plain_user.x)
    want = torch.stack(all_exits(first.model, x), dim=1).numpy()
    for out in ("pyfunc_out.npy", "torch_out.npy"):
        got = np.load(plain_user.folder / out)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_no_fallback_store_was_created(store, first, second) -> None:
    """Every call used the explicit URI: MLflow never created ./mlflow.db or ./mlruns."""
    assert sorted(p.name for p in store.workdir.iterdir()) == []


def test_weights_roundtrip_leaves_caller_model_alone(tmp_path: Path) -> None:
    """channels_last / train-mode models are saved as plain CPU tensors; the caller's model is
    not switched to eval or another memory format by the export copy."""
    from storage.model_export import portable_copy, read_weights, write_weights

    model = tiny_sdn(2).to(memory_format=torch.channels_last).train()
    copy = portable_copy(model)
    assert model.training and not copy.training
    conv_weight = next(p for p in model.parameters() if p.dim() == 4)
    assert conv_weight.is_contiguous(memory_format=torch.channels_last)
    write_weights(model, tmp_path)
    rebuilt = read_weights(tmp_path, "roundtrip")
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    for got, want in zip(all_exits(rebuilt, x), all_exits(model, x), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
