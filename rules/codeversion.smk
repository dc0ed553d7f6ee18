# The code-version param of every script rule (included by common.smk and architectures.smk).
from pathlib import Path

from jacobian_spectrum.common.codeversion import code_version as script_code_version

SRC = Path(workflow.basedir) / "src" / "jacobian_spectrum"


def code_version(script):
    """The ``code`` param of a rule: a hash of its script and of every package module the script
    imports, directly or not (read from the sources), so that editing any of them reruns the job."""
    return script_code_version(Path(workflow.basedir) / "workflow" / "scripts" / script, SRC)
