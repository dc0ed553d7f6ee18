import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"


def snakemake(*args: str, cwd: Path = ROOT, check: bool = True, timeout: int = 1200) -> subprocess.CompletedProcess:
    """Run the workflow's snakemake as a subprocess; return the completed process."""
    cmd = [sys.executable, "-m", "snakemake", *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def tiny_results(tmp_path_factory) -> Path:
    """The tiny config run once end to end; tests read its results (do not modify them)."""
    out = tmp_path_factory.mktemp("tiny") / "results"
    snakemake("--cores", "2", "--configfile", str(TINY), "--config", f"results={out}")
    return out


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that reads the tiny workflow's results waits for the whole workflow, and a CIFAR-10
    test for a CIFAR-10 workflow: both are slow (`pytest -m "not slow"`, the fast tier of
    CONTRIBUTING.md, replaces the default `-m 'not cifar10'` and must leave them out too)."""
    for item in items:
        if "tiny_results" in getattr(item, "fixturenames", ()) or item.get_closest_marker("cifar10"):
            item.add_marker(pytest.mark.slow)
