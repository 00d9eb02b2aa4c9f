"""The report's sections, one module per job; every module here is imported before a report is
built, and registers its sections with ``workflows.report.section`` (see ``workflows.report``).

Built-in orders: 10 overview, 20 per-exit accuracy, 30 early exit, 40 calibration,
50 overthinking, 90 runs. A new module picks a free order to place its section between them.
"""
