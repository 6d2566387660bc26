"""The command line itself: help that answers at once, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

from sparse_transformer import cli

# Each takes from a tenth of a second (numpy) to seconds (torch, lightning, mlflow) to import.
HEAVY = ("torch", "triton", "lightning", "mlflow", "matplotlib", "numpy", "h5py")


def test_help_imports_no_heavy_library():
    """`sparse-transformer --help` and every subcommand's help are read from light modules:
    the libraries are imported by the commands that use them (the subcommands' `run`)."""
    script = f"""
import json, sys
from sparse_transformer import cli
for argv in ([], *([name] for name in cli.COMMANDS)):
    try:
        cli.main([*argv, "--help"])
    except SystemExit:
        pass
print(json.dumps(sorted({{name.split(".")[0] for name in sys.modules}} & set({HEAVY!r}))))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert all(name in result.stdout for name in cli.COMMANDS)  # every help was printed
    assert json.loads(result.stdout.splitlines()[-1]) == []
