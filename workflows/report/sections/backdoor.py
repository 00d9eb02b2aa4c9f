"""The backdoor experiment (paper-spec "Backdoor experiment"): per exit of each poisoned run, clean
accuracy, accuracy on triggered inputs and attack success; what early exit at the stored clean-val
threshold recovers on triggered inputs; and whether the confusion score (not max-softmax) tells
triggered inputs from clean ones. Numbers are the catalogue's ``backdoor_exits`` /
``backdoor_summaries`` rows; the figures are ``workflows.report_backdoor``'s."""

from __future__ import annotations

import math

from storage.predictions import PredictionStore
from workflows import report_backdoor
from workflows.report import section
from workflows.report.context import ReportContext
from workflows.report.html import Block, Column, Figures, Note, Table
from workflows.report.samples import folder_of
from workflows.report.sections.common import identity_cells, identity_columns


def _value(x: object) -> object:
    return None if isinstance(x, float) and math.isnan(x) else x


@section("backdoor", "Backdoor experiment", order=60)
def backdoor(ctx: ReportContext) -> list[Block] | None:
    run_ids = ctx.run_ids
    if not run_ids:
        return None
    per_exit = ctx.cat.backdoor(run_id=run_ids)
    if per_exit.empty:
        return None
    summaries = ctx.cat.backdoor_summaries(run_id=run_ids)
    by_id = {r.run_id: r for r in ctx.runs.itertuples()}
    final = per_exit.sort_values("exit_index").groupby("run_id").tail(1).set_index("run_id")
    columns = [
        *identity_columns(ctx),
        Column("clean acc", "pct", "final head, clean test split"),
        Column("triggered acc", "pct", "final head, triggered test inputs, true labels"),
        Column("attack success", "pct", "final head: triggered non-target inputs -> the target"),
        Column(
            "destructive",
            "pct",
            "of the final head's errors on triggered inputs, the share some IC got right",
        ),
        Column("early exit", "text", "threshold chosen on clean val (stored choice)"),
        Column("EE triggered acc", "pct", "early exit at that threshold, triggered inputs"),
        Column("EE attack success", "pct"),
        Column("conf. AUROC", "dec2", "confusion score: triggered vs clean inputs"),
        Column("max-softmax AUROC", "dec2"),
    ]
    rows = []
    for s in summaries.itertuples():
        f = final.loc[s.run_id]
        rows.append([
            *identity_cells(ctx, by_id[s.run_id]),
            f["clean_accuracy"], f["triggered_accuracy"], f["attack_success"],
            s.destructive_fraction,
            "" if s.early_exit_target is None else f"{s.early_exit_target}",
            _value(s.early_exit_accuracy), _value(s.early_exit_attack_success),
            _value(s.confusion_auroc), _value(s.max_softmax_auroc),
        ])  # fmt: skip
    figures = [
        ctx.figure(
            report_backdoor.attack_success_figure(per_exit),
            "backdoor_attack_success.png",
            "per exit: clean accuracy, triggered accuracy and attack success",
            "Per exit of each poisoned run: accuracy on the clean test split, on triggered inputs "
            "(true labels) and the attack's success. Early ICs of an ic_only twin still answer "
            "the true class where the final head answers the attacker's.",
            wide=True,
        )
    ]
    if summaries["early_exit_accuracy"].notna().any():
        figures.append(
            ctx.figure(
                report_backdoor.early_exit_figure(summaries),
                "backdoor_early_exit.png",
                "final head vs early exit on triggered inputs",
                "On triggered inputs: the final head against early exit at the threshold chosen "
                "on clean validation (the run's stored choice).",
            )
        )
    if ctx.predictions_root is not None:
        store = PredictionStore(ctx.predictions_root)
        for s in summaries.itertuples():
            clean = store.read_outputs(s.run_id, "test")
            triggered = store.read_outputs(s.run_id, "test_triggered")
            figures.append(
                ctx.figure(
                    report_backdoor.detection_figure(
                        clean, triggered, int(s.target), ctx.label(by_id[s.run_id])
                    ),
                    f"{folder_of(by_id[s.run_id])}/backdoor_detection.png",
                    f"confusion vs max-softmax, triggered vs clean: {s.run_id}",
                    "Clean vs triggered test inputs (non-target classes): the confusion score "
                    "and the final head's max-softmax, with each score's AUROC.",
                )
            )
    return [
        Note(
            "BadNets-style backdoor: a trigger stamped on training images relabelled to the "
            "target class. ic_only twins train their ICs on clean data on the frozen poisoned "
            "backbone (docs/backdoor.md)."
        ),
        Table("backdoor", columns, rows, "poisoned runs, test split"),
        Figures(figures),
    ]
