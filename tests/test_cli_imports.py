"""The CLI and the config stay light: registering every command, the law commands and the sweep schema
load none of the training stack, and the model's shape arithmetic loads no torch."""

import json
import subprocess
import sys

from conftest import REPO

HEAVY = {"torch", "ray", "deepspeed", "datasets", "wandb"}


def _heavy_after(code: str) -> set[str]:
    """The heavy top-level packages in `sys.modules` after running `code` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{name.split('.')[0] for name in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    return set(json.loads(done.stdout.splitlines()[-1])) & HEAVY


def test_cli_registration_law_commands_and_config_load_no_training_stack():
    code = (
        "import contextlib, io\n"
        "import pipeline.cli.law_commands, pipeline.config\n"
        "from pipeline.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['--help']) == 0\n"
    )
    assert _heavy_after(code) == set()


def test_model_shapes_load_no_torch():
    assert _heavy_after("import stages.shapes") == set()
