"""Packages defcon uses only for some defenses and risks, installed apart from the project.

torchattacks 3.5.1 (the PGD, TPGD and APGD attacks of adversarial training and the evasion
risk) declares `torchvision` and `requests~=2.25.1`; letting pip resolve those replaces the
user's torch with another build and downgrades requests. The code imports only torch, numpy and
scipy, so it is not a dependency of the project: it is installed on its own with `--no-deps`
(docs/install.md), and what needs it asks for it here, before any training where possible.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from defcon.errors import DefconError

TORCHATTACKS = "torchattacks"

# The exact line that installs each optional package without its declared dependencies.
INSTALL: dict[str, str] = {TORCHATTACKS: "pip install --no-deps torchattacks==3.5.1"}


def missing_package(package: str, needed_by: str) -> str | None:
    """Why `needed_by` cannot run here (`package` does not import), None when it can.

    Importing (not just locating) the package also catches an install that is present but
    broken; callers only ask when they are about to use it.
    """
    try:
        importlib.import_module(package)
    except ImportError:
        return (
            f"{needed_by} needs the package '{package}', which is not installed; "
            f"install it with: {INSTALL[package]} "
            "(without its declared dependencies, which would replace torch; see docs/install.md)"
        )
    return None


def require(package: str, needed_by: str) -> ModuleType:
    """The imported `package`, or a one-line DefconError naming the line that installs it."""
    problem = missing_package(package, needed_by)
    if problem is not None:
        raise DefconError(problem)
    return importlib.import_module(package)


def torchattacks(needed_by: str = "this attack") -> ModuleType:
    """The torchattacks module (imported on first use, so `import defcon` never loads it)."""
    return require(TORCHATTACKS, needed_by)
