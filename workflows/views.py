"""The table view of every ``sdn`` listing: which columns a person sees first, under what
headers, in what format (see ``workflows.tables``).

Keys are the field names of the query behind each listing (what CSV and JSON print); a key the
query does not return is skipped. To add a column, add a ``Col`` here; ``default=False`` keeps
it out of the default table (which must fit 100 columns on the quickstart catalogue:
``tests/test_cli_surface.py`` checks every view below).
"""

from __future__ import annotations

from workflows.tables import Col, View

SWEEPS = View(
    "sdn sweep list",
    "sweeps",
    (
        Col("sweep", "sweep"),
        Col("created_at", "created (UTC)", "time"),
        Col("runs", "runs", "int"),
        Col("done", "done", "int"),
        Col("failed", "failed", "int"),
        Col("skipped", "skipped", "int"),
        Col("in_progress", "in progress", "int"),
        Col("code_version", "code", max_width=24),
    ),
    empty="(no sweeps: `sdn sweep launch` records one)",
)

# The runs of a sweep, as `sdn sweep status` shows them.
STATUS = View(
    "sdn sweep status",
    "runs",
    (
        Col("sweep", "sweep", collapse=True),
        Col("arch", "arch"),
        Col("dataset", "dataset", collapse=True),
        Col("train_mode", "mode"),
        Col("seed", "seed", "int", collapse=True),
        Col("poison", "poisoning", optional=True, max_width=20),
        Col("status", "status"),
        Col("epochs", "epochs", "int"),
        Col("best_val_accuracy", "best val", "pct"),
        Col("model_version", "version", right=True),
        Col("mlflow_run_id", "MLflow run", whole=True),
        Col("error", "error", optional=True, max_width=30),
        Col("run_id", "run id", default=False),
        Col("width", "width", "float", default=False),
        Col("started_at", "started (UTC)", "time", default=False),
        Col("ended_at", "finished (UTC)", "time", default=False),
        Col("model_name", "registered model", default=False),
        Col("parquet_path", "parquet", default=False),
        Col("code_version", "code", default=False),
        Col("num_exits", "exits", "int", default=False),
        Col("cnn_flops", "CNN FLOPs", "mega", default=False),
    ),
    empty="(no runs)",
)

RUNS = View(
    "sdn catalogue runs",
    "runs",
    (
        Col("sweep", "sweep", collapse=True),
        Col("arch", "arch"),
        Col("dataset", "dataset", collapse=True),
        Col("train_mode", "mode"),
        Col("seed", "seed", "int", collapse=True),
        Col("poison", "poisoning", optional=True, max_width=20),
        Col("status", "status"),
        Col("epochs", "epochs", "int"),
        Col("best_val_accuracy", "best val", "pct"),
        Col("model_version", "version", right=True),
        Col("ended_at", "finished (UTC)", "time"),
        Col("error", "error", optional=True, max_width=30),
        Col("run_id", "run id", default=False),
        Col("width", "width", "float", default=False),
        Col("started_at", "started (UTC)", "time", default=False),
        Col("mlflow_run_id", "MLflow run", default=False),
        Col("model_name", "registered model", default=False),
        Col("parquet_path", "parquet", default=False),
        Col("code_version", "code", default=False),
        Col("num_exits", "exits", "int", default=False),
        Col("cnn_flops", "CNN FLOPs", "mega", default=False),
        Col("config", "config", default=False, max_width=40),
    ),
    empty="(no runs match)",
)

EXITS = View(
    "sdn catalogue exits",
    "per-exit accuracy and cost",
    (
        Col("sweep", "sweep", collapse=True),
        Col("arch", "arch"),
        Col("dataset", "dataset", collapse=True),
        Col("train_mode", "mode"),
        Col("seed", "seed", "int", collapse=True),
        Col("poison", "poisoning", optional=True, max_width=20),
        Col("split", "split", collapse=True),
        Col("exit", "exit"),
        Col("accuracy", "accuracy", "pct"),
        Col("relative_cost", "cost/CNN", "cost"),
        Col("cumulative_flops", "FLOPs", "mega"),
        Col("ece", "ECE", "dec2", optional=True),
        Col("run_id", "run id", default=False),
        Col("exit_index", "exit index", "int", default=False),
        Col("is_final", "final", "bool", default=False),
    ),
    empty="(no per-exit results match)",
)

EARLY_EXIT = View(
    "sdn catalogue early-exit",
    "best early-exit operating point per (arch, dataset, mode)",
    (
        Col("arch", "arch"),
        Col("dataset", "dataset", collapse=True),
        Col("train_mode", "mode"),
        Col("poison", "poisoning", optional=True, max_width=20),
        Col("policy", "policy", collapse=True),
        Col("status", "status", collapse=True),
        Col("runs_in_group", "runs", "int", collapse=True),
        Col("threshold", "threshold", right=True),  # as format_threshold writes it: off, k=2
        Col("val_accuracy", "val acc", "pct"),
        Col("val_relative_cost", "val cost", "cost"),
        Col("accuracy", "test acc", "pct"),
        Col("relative_cost", "test cost", "cost"),
        Col("accuracy_drop", "drop", "pt"),  # test: final head's accuracy - this one's
        Col("final_accuracy", "final acc", "pct", default=False),
        Col("val_drop", "val drop", "pt", default=False),
        Col("val_test_gap", "test - val drop", "pt", default=False),
        Col("target", "target", default=False),
        Col("method", "method", default=False),
        Col("delta", "delta", "float", default=False),
        Col("sweep", "sweep", default=False),
        Col("run_id", "run id", default=False),
        Col("seed", "seed", "int", default=False),
        Col("split", "split", default=False),
        Col("exits_per_output", "samples per exit", default=False),
    ),
    empty="(no analysed run matches)",
)

OVERTHINKING = View(
    "sdn catalogue overthinking",
    "overthinking (test split)",
    (
        Col("sweep", "sweep", collapse=True),
        Col("arch", "arch"),
        Col("dataset", "dataset", collapse=True),
        Col("train_mode", "mode"),
        Col("seed", "seed", "int", collapse=True),
        Col("poison", "poisoning", optional=True, max_width=20),
        Col("early_right", "right at an IC", "pct"),
        Col("never_right", "never right", "pct"),
        Col("oracle_relative_cost", "oracle cost", "cost"),
        Col("destructive_fraction", "destructive", "pct"),
        Col("confusion_auroc", "conf. AUROC", "dec2"),
        Col("run_id", "run id", default=False),
        Col("first_correct", "first correct (counts)", default=False),
        Col("destructive_per_ic", "destructive per IC (%)", "pct_list", default=False),
        Col("max_softmax_auroc", "max-softmax AUROC", "dec2", default=False),
        Col("confusion_mean", "confusion mean", "float", default=False),
        Col("confusion_std", "confusion std", "float", default=False),
    ),
    empty="(no overthinking summaries match)",
)

BACKDOOR = View(
    "sdn catalogue backdoor",
    "backdoor, per exit: clean test split and its triggered twin (non-target images)",
    (
        Col("sweep", "sweep", collapse=True),
        Col("arch", "arch"),
        Col("dataset", "dataset", collapse=True),
        Col("train_mode", "mode"),
        Col("seed", "seed", "int", collapse=True),
        Col("poison", "poison", collapse=True, max_width=40),
        Col("exit", "exit"),
        Col("clean_accuracy", "clean acc", "pct"),
        Col("triggered_accuracy", "triggered acc", "pct"),
        Col("attack_success", "attack success", "pct"),
        Col("clean_target_rate", "target on clean", "pct"),
        Col("run_id", "run id", default=False),
        Col("exit_index", "exit index", "int", default=False),
        Col("is_final", "final", "bool", default=False),
        Col("target", "target class", "int", default=False),
        Col("num_triggered", "triggered images", "int", default=False),
        Col("destructive_fraction", "destructive", "pct", default=False),
        Col("destroyed_share", "destroyed", "pct", default=False),
        Col("confusion_auroc", "conf. AUROC", "dec2", default=False),
        Col("max_softmax_auroc", "max-softmax AUROC", "dec2", default=False),
        Col("early_exit_target", "EE target", default=False),
        Col("early_exit_threshold", "EE threshold", "threshold", default=False),
        Col("early_exit_accuracy", "EE triggered acc", "pct", default=False),
        Col("early_exit_attack_success", "EE attack success", "pct", default=False),
        Col("early_exit_relative_cost", "EE cost", "cost", default=False),
    ),
    empty="(no backdoor figures match: only poisoned runs have them)",
)

# `sdn catalogue backdoor --summary`: one row per poisoned run.
BACKDOOR_SUMMARY = View(
    "sdn catalogue backdoor --summary",
    "backdoor per run: final head; destructive overthinking, detection and early exit on "
    "triggered inputs",
    (
        Col("sweep", "sweep", collapse=True),
        Col("arch", "arch", collapse=True),
        Col("dataset", "dataset", collapse=True),
        Col("train_mode", "mode"),
        Col("seed", "seed", "int", collapse=True),
        Col("poison", "poison", collapse=True, max_width=40),
        Col("final_clean_accuracy", "clean", "pct"),
        Col("final_attack_success", "attack", "pct"),
        Col("destructive_fraction", "destr.", "pct"),
        Col("early_exit_threshold", "EE q", right=True),  # as format_threshold writes it: off
        Col("early_exit_accuracy", "EE acc", "pct"),
        Col("early_exit_attack_success", "EE att.", "pct"),
        Col("early_exit_relative_cost", "EE cost", "cost"),
        Col("confusion_auroc", "conf. AUC", "dec2", optional=True),
        Col("max_softmax_auroc", "softmax AUC", "dec2"),
        Col("run_id", "run id", default=False),
        Col("final_triggered_accuracy", "triggered acc", "pct", default=False),
        Col("target", "target class", "int", default=False),
        Col("num_clean", "clean images", "int", default=False),
        Col("num_triggered", "triggered images", "int", default=False),
        Col("num_target_excluded", "target-class excluded", "int", default=False),
        Col("destructive_per_ic", "destructive per IC (%)", "pct_list", default=False),
        Col("destroyed_share", "destroyed", "pct", default=False),
        Col("early_exit_target", "EE target", default=False),
        Col("early_exit_exits", "EE samples per exit", default=False),
        Col("early_exit_clean_accuracy", "EE clean acc", "pct", default=False),
        Col("early_exit_clean_relative_cost", "EE clean cost", "cost", default=False),
    ),
    empty="(no backdoor summaries match: only poisoned runs have them)",
)

SQL = View("sdn catalogue sql", "", (), open=True)

MODELS = View(
    "sdn models list",
    "registered models",
    (
        Col("name", "name"),
        Col("version", "version", "int"),
        Col("aliases", "aliases", max_width=24),
        Col("sweep", "sweep", collapse=True),
        Col("created", "created (UTC)", "time"),
        Col("run_id", "MLflow run", default=False),
        Col("tags", "tags", default=False),
    ),
    empty="(no registered models)",
)

MODEL_INFO = View(
    "sdn models get",
    "",
    (Col("field", "field"), Col("value", "value", max_width=72)),
)

PREDICTIONS = View(
    "sdn models predict",
    "",
    (
        Col("input", "input", max_width=44),
        Col("prediction", "prediction", "int"),
        Col("label", "label", "int", optional=True),
        Col("correct", "correct", "bool", optional=True),
        Col("exit", "exit"),
        Col("relative_cost", "cost/CNN", "cost"),
    ),
    empty="(no inputs)",
)

CELLS = View(
    "sdn sweep validate",
    "cells, in dependency order",
    (
        Col("order", "#", "int"),
        Col("cell", "cell"),
        Col("wave", "wave", "int"),
        Col("after", "after"),
        Col("epochs", "epochs", "int"),
        Col("train_images", "images", "count"),
        Col("work", "work", "count"),
        Col("run_id", "run id", default=False),
        Col("parent", "cnn cell", default=False),
        Col("arch", "arch", default=False),
        Col("dataset", "dataset", default=False),
        Col("mode", "mode", default=False),
        Col("seed", "seed", "int", default=False),
        Col("train", "training settings", default=False),
    ),
)

ALL = (
    SWEEPS,
    STATUS,
    RUNS,
    EXITS,
    EARLY_EXIT,
    OVERTHINKING,
    BACKDOOR,
    BACKDOOR_SUMMARY,
    SQL,
    MODELS,
    MODEL_INFO,
    PREDICTIONS,
    CELLS,
)
