"""Weights & Biases: an offline run (never the network) under ``DIR/wandb/``, which ``wandb sync``
uploads later; the project is ``WANDB_PROJECT`` (wandb's setting) or ``modeldebug``.

History rows by step (the same names as the other platforms), the final numbers and the findings
(``modeldebug/finding_list``, one dict each) in the summary, the run's facts as config, the
findings as the run's notes and tags (``modeldebug:<worst severity>``, one per kind), and the
whole report as the run file ``modeldebug-report.json``. A run the user already has open is left
as it is (``reinit="create_new"``); the exported run ends with the script's exit code.
"""

from __future__ import annotations

import os
from itertools import groupby
from pathlib import Path

from modeldebug.errors import require
from modeldebug.export.content import ExportContent

PROJECT = "modeldebug"
_TAG_CHARS = 64  # wandb's limit on a tag's length


def write(content: ExportContent, directory: str) -> str:
    """Write ``content`` as an offline wandb run under ``directory``; the run's directory."""
    wandb = require("wandb", "wandb")
    Path(directory).mkdir(parents=True, exist_ok=True)
    settings = wandb.Settings(
        mode="offline", silent=True, quiet=True, console="off", reinit="create_new",
        disable_git=True, save_code=False, x_disable_stats=True, x_disable_machine_info=True,
        x_save_requirements=False,
    )
    tags = [f"modeldebug:{content.worst_severity}"] + sorted({f"modeldebug:{r['kind']}" for r in content.findings if not r["suppressed"]})
    run = wandb.init(
        dir=str(directory), project=os.environ.get("WANDB_PROJECT") or PROJECT, name=content.run_id,
        config={f"modeldebug.{k}": v for k, v in content.info.items()}, notes=content.findings_text,
        tags=[t[:_TAG_CHARS] for t in tags], settings=settings,
    )
    code = 1
    try:
        for step, scalars in groupby(content.scalars, key=lambda s: s.step):  # history steps must rise
            run.log({s.tag: s.value for s in scalars}, step=step)
        run.summary.update(content.final)
        run.summary.update({"modeldebug/finding_list": content.findings,
                            "modeldebug/worst_severity": content.worst_severity})
        report_file = Path(run.dir) / "modeldebug-report.json"
        report_file.write_text(content.report_json, encoding="utf-8")
        run.save(str(report_file), base_path=run.dir, policy="now")
        code = content.exit_code if content.exit_code is not None else 0
    finally:
        run.finish(exit_code=code)
    return str(Path(run.dir).parent)
