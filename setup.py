"""Builds bunancer. Everything is declared in pyproject.toml; this file only adds the
data plane's compiled modules (bunancer/core, the list is `bunancer.native.COMPILED`),
built with mypyc when the package is built, as black and mypy ship theirs.

- A wheel (or `pip install .`) carries the extension modules beside their source; where no
  C compiler is found they are skipped (`optional`) and the source runs as it is.
- An editable install (`pip install -e .`, the checkout `./run` uses) builds none: there
  `bunancer compile` builds into `bunancer/core/_compiled/`, used only while it matches the
  source, so an edited module never runs as a stale build.
- BUNANCER_PURE_PYTHON=1 at build time builds none either.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from setuptools import setup

# The setup.py commands that build binaries. pip also runs this file for metadata alone
# (egg_info, dist_info) and for an editable install (editable_wheel): no mypyc run there.
BUILDS = frozenset(("bdist_wheel", "build", "build_ext", "install"))


def data_plane_extensions() -> list[Any]:
    if BUILDS.isdisjoint(sys.argv) or os.environ.get("BUNANCER_PURE_PYTHON", "") not in ("", "0"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:  # a build without the build requirements: the source only
        return []
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bunancer.native import COMPILED, GROUP

    sources = [f"bunancer/core/{module}.py" for module in COMPILED]
    flags = ["--follow-imports=silent", "--ignore-missing-imports"]  # as `bunancer compile`
    extensions = mypycify([*flags, *sources], group_name=GROUP)
    for extension in extensions:
        extension.optional = True  # no C compiler: install the source, not an error
    return list(extensions)


setup(ext_modules=data_plane_extensions())
