"""How sweeps and cells are laid out in MLflow: the names both the writers (``workflows``) and
``storage.catalogue.rebuild`` (which restores the catalogue from MLflow and Parquet) rely on.

A sweep is one experiment ``sweep-<name>`` holding one parent run (tag ``sdn.kind=sweep``) that
carries the full sweep spec as ``sweep/spec.json``; each cell is a run nested under it (tag
``sdn.kind=cell``, ``sdn.run_id=<run_id>``, plus architecture / dataset / mode / seed tags) that
carries its analysis as ``analysis/summary.json`` (``RunSummary.to_dict()``). A cell trained on
poisoned data also carries its ``sdn.backdoor.PoisonConfig.identity()`` tags: ``backdoor`` (the
poisoning tag, part of the cell's identity), ``backdoor.target``, ``backdoor.rate``...
"""

from __future__ import annotations

RUN_ID_TAG = "sdn.run_id"
SWEEP_TAG = "sdn.sweep"
KIND_TAG = "sdn.kind"
SPEC_ARTIFACT = "sweep/spec.json"
SUMMARY_ARTIFACT = "analysis/summary.json"
CONFIG_ARTIFACT = "cell/config.json"  # on a cell's run: the trial config it was launched with
ERROR_TAG = "sdn.error"  # on a cell's run: one line saying why training or analysis failed
CODE_VERSION_TAG = "code_version"
POISON_TAG = "backdoor"  # on a poisoned cell's run (and model version): its poisoning tag
EXPERIMENT_PREFIX = "sweep-"


def experiment_name(sweep: str) -> str:
    return f"{EXPERIMENT_PREFIX}{sweep}"
