"""The README's commands are the ones CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _ci_test_command() -> str:
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    return next(ln for ln in lines if "pytest" in ln and not ln.startswith("#"))


def test_ci_runs_the_readme_test_command_verbatim():
    assert _ci_test_command() in (ROOT / "README.md").read_text()


def test_ci_installs_cpu_torch_before_anything_else():
    assert _ci_test_command().startswith("pip install torch==2.13.0 && ")
