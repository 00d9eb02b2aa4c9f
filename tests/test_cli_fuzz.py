"""Bad input by the thousand (issue 13), generated with Hypothesis: sweep files (a valid file with
keys, types and values mutated, and random YAML), argument vectors for every command that cannot
start a sweep, and ``sdn catalogue sql`` statements. 2,100 cases per run (about a minute on 2 busy cores), in-process.

Every case must be accepted (exit 0, nothing on stderr) or refused (exit 2, exactly one
``error:`` line); never a traceback, another code or a write: the home and the working directory
are hashed, byte for byte, before and after every case.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from typer.testing import CliRunner

from bench.quickstart_catalogue import build
from workflows.cli import app

SWEEP_CASES, ARGV_CASES, SQL_CASES = 800, 800, 500


def fast(cases: int) -> settings:
    return settings(
        max_examples=cases,
        deadline=None,
        database=None,  # nothing written to the working tree
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


BASE: dict[str, Any] = {
    "name": "fuzz",
    "grid": {"architectures": ["mobilenet"], "datasets": ["digits"], "modes": ["cnn", "ic_only"],
             "seeds": [0]},
    "training": {"epochs": 2, "batch_size": 32, "width": 0.125, "milestones": [1]},
    "overrides": [{"match": {"mode": "ic_only"}, "set": {"epochs": 1, "milestones": None}}],
    "resources": {"cpus_per_trial": 1, "max_concurrent_trials": 2},
    "checkpoint": {"every_epochs": 1, "max_failures": 1},
    "analysis": {"batch_size": 64, "max_accuracy_drops": [0.01], "cost_budgets": [0.5]},
    "data": {"download": False},
}  # fmt: skip


class World:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.cwd = root / "cwd"
        self.inputs = root / "inputs"
        for folder in (self.home, self.cwd, self.inputs):
            folder.mkdir()
        build(self.home / "catalogue.db")
        (self.inputs / "a-file").write_text("text\n")
        self.before = self.state()

    def state(self) -> dict[str, str]:
        out = {}
        for base in (self.home, self.cwd):
            for path in sorted(base.rglob("*")):
                out[str(path)] = (
                    "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
                )
        return out

    def run(self, args: list[str]) -> Any:
        env = {"SDN_HOME": str(self.home), "COLUMNS": "100", "SDN_CATALOGUE": None,
               "SDN_MLFLOW_TRACKING_URI": None, "MLFLOW_TRACKING_URI": None, "RAY_ADDRESS": None}  # fmt: skip
        result = CliRunner().invoke(app, args, env=env, catch_exceptions=False)  # type: ignore[arg-type]
        with contextlib.suppress(InvalidArgument):  # outside a Hypothesis test
            event(f"exit {result.exit_code}")  # --hypothesis-show-statistics shows the mix
        check(result, args)
        assert self.state() == self.before, f"something was written: {args!r}"
        return result


def check(result: Any, args: list[str]) -> None:
    where = f"args={args!r}\nstdout={result.stdout[-500:]!r}\nstderr={result.stderr[-500:]!r}"
    assert "Traceback" not in result.stderr, where
    assert result.exit_code in (0, 2), where
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if result.exit_code == 0:
        assert lines == [], where
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), where
        assert result.stdout == "", where


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    world = World(tmp_path_factory.mktemp("fuzz ü"))
    import os

    old = os.getcwd()
    os.chdir(world.cwd)  # a stray write would land here (and be seen)
    yield world
    os.chdir(old)


# --- sweep files --------------------------------------------------------------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "mobilenet",
            "resnet57",
            "digits",
            "cifar10",
            "folder:",
            "folder:/nowhere",
            "cnn",
            "ic_only",
            "sdn",
            "auto",
            "0.5",
            "1e309",
            "~",
            "null",
            "..",
            "é ü",
        ]
    ),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every position in a nested dict/list (as a key path)."""
    out = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            out += _paths(value, (*prefix, i))
    return out


def _get(data: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        data = data[key]
    return data


@st.composite
def mutated_sweeps(draw: st.DrawFn) -> str:
    data = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        positions = [p for p in _paths(data) if p]
        if not positions:
            break
        path = draw(st.sampled_from(positions))
        parent, key = _get(data, path[:-1]), path[-1]
        action = draw(st.sampled_from(["value", "delete", "rename", "add"]))
        if action == "value":
            parent[key] = draw(VALUES)
        elif action == "delete":
            del parent[key]
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = parent.pop(key)
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = draw(VALUES)
    return yaml.safe_dump(data, allow_unicode=True)


RANDOM_YAML = st.one_of(
    st.text(max_size=200),
    st.lists(
        st.sampled_from(
            [
                "name: x",
                "grid:",
                "  architectures: [mobilenet]",
                "- a",
                ": b",
                "{",
                "[",
                "!!python/object:os.system",
                "&a x",
                "*a",
                "\t",
                "---",
                "training: {epochs: .nan}",
                "seeds: [0, 0]",
                "'",
            ]
        ),
        max_size=8,
    ).map("\n".join),
)


@fast(SWEEP_CASES)
@given(text=st.one_of(mutated_sweeps(), mutated_sweeps(), RANDOM_YAML))
def test_fuzzed_sweep_files_are_validated_in_one_line(world: World, text: str) -> None:
    path = world.inputs / "sweep ü.yaml"
    path.write_text(text, encoding="utf-8")
    result = world.run(["sweep", "validate", str(path)])
    if result.exit_code == 0:
        assert "nothing was written" in result.stdout


def test_the_unmutated_sweep_is_valid(world: World) -> None:
    path = world.inputs / "base.yaml"
    path.write_text(yaml.safe_dump(BASE))
    assert world.run(["sweep", "validate", str(path)]).exit_code == 0


# --- argument vectors ---------------------------------------------------------------------------

COMMANDS = {  # every command that cannot start a sweep or write when it succeeds
    ("sweep", "status"): ["--home", "--catalogue", "--format", "--columns", "--wide"],
    ("sweep", "list"): ["--home", "--catalogue", "--format", "--columns", "--wide"],
    ("sweep", "validate"): ["--preset", "--home", "--format", "--columns", "--wide"],
    ("catalogue", "runs"): ["--arch", "--dataset", "--mode", "--seed", "--status", "--sweep",
                            "--allow-empty", "--home", "--catalogue", "--format", "--columns", "--wide"],
    ("catalogue", "exits"): ["--arch", "--dataset", "--mode", "--seed", "--sweep", "--split",
                             "--allow-empty", "--format", "--columns", "--wide"],
    ("catalogue", "early-exit"): ["--max-drop", "--budget", "--arch", "--dataset", "--mode",
                                  "--sweep", "--allow-empty", "--format", "--columns", "--wide"],
    ("catalogue", "overthinking"): ["--arch", "--mode", "--seed", "--sweep", "--allow-empty",
                                    "--format", "--columns", "--wide"],
    ("catalogue", "sql"): ["--timeout", "--max-rows", "--format", "--columns", "--wide"],
    ("models", "list"): ["--home", "--tracking-uri", "--format", "--columns", "--wide"],
    ("models", "get"): ["--out", "--home", "--tracking-uri", "--format"],
    ("models", "predict"): ["--dataset", "--split", "--limit", "--batch-size", "--threshold",
                            "--budget", "--data-root", "--out", "--format", "--columns"],
}  # fmt: skip
FLAGS = {"--allow-empty", "--wide"}
VALID = {  # values each option accepts on the fuzz catalogue, drawn half of the time
    "--arch": ["mobilenet", "resnet56", "vgg16"], "--dataset": ["digits"], "--mode": ["cnn", "sdn"],
    "--seed": ["0"], "--status": ["done", "failed"], "--sweep": ["quickstart"],
    "--split": ["val", "test"], "--format": ["table", "csv", "json"],
    "--columns": ["arch,status", "run_id", "arch"], "--max-drop": ["0.02", "0"],
    "--budget": ["0.5", "1"], "--timeout": ["1"], "--max-rows": ["100"],
    "--preset": ["quickstart", "paper"],
}  # fmt: skip
TOKENS = st.sampled_from(
    ["mobilenet", "resnet56", "nosucharch", "digits", "cifar10", "sdn", "cnn", "weird", "done",
     "failed", "quickstart", "0", "1", "-1", "0.5", "1.5", "nan", "inf", "-inf", "1e308", "", " ",
     "table", "csv", "json", "xml", "arch,status", "run_id", "nope,arch", "val", "test", "train",
     "x' OR '1'='1", "'); DROP TABLE runs; --", "SELECT 1", "SELECT * FROM runs", "DELETE FROM runs",
     "sdn-resnet56-digits-sdn@latest", "bad ref!!", "runs:/abc", "http://127.0.0.1:9",
     "sqlite:///nowhere/mlflow.db", "--", "-f", "--help-me", "%s", "é ü", "/", "~", ".."]
)  # fmt: skip


@st.composite
def argument_vectors(draw: st.DrawFn, world_inputs: Path) -> list[str]:
    command = draw(st.sampled_from(sorted(COMMANDS)))
    args = list(command)
    paths = [str(world_inputs / "a-file"), str(world_inputs / "nowhere é"), str(world_inputs),
             str(world_inputs / "a-file" / "under")]  # fmt: skip
    values = st.one_of(TOKENS, st.sampled_from(paths), st.text(max_size=10))
    if command == ("sweep", "status") and draw(st.booleans()):
        args.append("quickstart")
    if command == ("catalogue", "sql"):
        args.append(draw(st.sampled_from(["SELECT arch FROM runs", "SELECT 1", "nonsense"])))
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        kind = draw(st.sampled_from(["option", "option", "option", "positional", "junk"]))
        if kind == "option":
            option = draw(st.sampled_from(COMMANDS[command]))
            args.append(option)
            if option in VALID and draw(st.booleans()):
                args.append(draw(st.sampled_from(VALID[option])))
            elif option not in FLAGS:
                args.append(draw(values))
        elif kind == "positional":
            args.append(draw(values))
        else:
            args.append(draw(st.text(min_size=1, max_size=8)))
    return args


@fast(ARGV_CASES)
@given(data=st.data())
def test_fuzzed_argument_vectors_get_one_line(world: World, data: st.DataObject) -> None:
    args = data.draw(argument_vectors(world.inputs))
    if args[:2] == ["catalogue", "sql"] and "--" not in args:
        args += ["--timeout", "2", "--max-rows", "5000"]
    world.run(args)


# --- catalogue sql ------------------------------------------------------------------------------

SQL_WORDS = st.sampled_from(
    ["SELECT", "*", "FROM", "runs", "sweeps", "exit_results", "early_exit_points", "WHERE", "AND",
     "OR", "NOT", "arch", "status", "accuracy", "run_id", "=", "<", ">", "(", ")", ",", ";", "1",
     "'x'", "NULL", "GROUP BY", "ORDER BY", "LIMIT", "UNION", "JOIN", "ON", "count(*)",
     "sum(accuracy)", "json_extract(config, '$.arch')", "randomblob(100)", "zeroblob(2000000000)",
     "printf('%.*c', 2000000000, 'x')", "load_extension('x')", "sqlite_version()", "PRAGMA",
     "table_info(runs)", "user_version", "= 3", "journal_mode", "ATTACH", "DATABASE", "'x.db'",
     "AS", "y", "DETACH", "VACUUM", "INTO", "'copy.db'", "INSERT", "INTO", "VALUES", "UPDATE", "SET",
     "DELETE", "DROP", "TABLE", "CREATE", "TEMP", "INDEX", "TRIGGER", "BEGIN", "COMMIT", "ROLLBACK",
     "SAVEPOINT", "RELEASE", "REINDEX", "ANALYZE", "EXPLAIN", "QUERY PLAN", "WITH RECURSIVE",
     "c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c)", "--", "/*", "*/", "'", '"', "?", ":p", "$x"]
)  # fmt: skip
SQL = st.one_of(
    st.lists(SQL_WORDS, min_size=1, max_size=12).map(" ".join),
    st.builds(lambda a, b: f"SELECT {a} FROM runs {b}",
              st.sampled_from(["*", "arch", "count(*)", "max(epochs)", "config", "x"]),
              st.sampled_from(["", "LIMIT 3", "WHERE arch = 'resnet56'", "WHERE", "ORDER BY 9"])),
    st.text(max_size=60),
)  # fmt: skip


@fast(SQL_CASES)
@given(query=SQL)
def test_fuzzed_sql_is_answered_or_refused_in_one_line(world: World, query: str) -> None:
    world.run(["catalogue", "sql", "--timeout", "2", "--max-rows", "5000", "--", query])


def test_enough_cases() -> None:
    assert SWEEP_CASES + ARGV_CASES + SQL_CASES >= 2000
