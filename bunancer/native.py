"""The data plane's per-request modules compiled with mypyc: the same source, run as C.

bunancer is written and read as Python. Building the package (a wheel, `pip install .`)
compiles the modules in `COMPILED` (everything a proxied request passes through) beside
their source (setup.py). In a checkout, `bunancer compile` runs mypyc over them and writes
the extension modules to ``bunancer/core/_compiled/`` beside a digest of the source they
were built from.
Importing `bunancer.core` puts that directory first on the package's search path only
while the digest still matches, so an edited module runs as Python until the next
compile and never as a stale build. ``BUNANCER_PURE_PYTHON=1`` runs the Python source
either way (a checkout's build or the package's). Compiled, a keep-alive request takes
35-40% of the instructions.

This module must not import `bunancer.core`: it decides how that package loads.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import time
from collections.abc import Callable, Sequence
from importlib.machinery import EXTENSION_SUFFIXES, ModuleSpec
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
CORE = PACKAGE / "core"
COMPILED_DIR = CORE / "_compiled"
DIGEST_FILE = "source.sha256"
# The interpreter's extension ABI (sysconfig's EXT_SUFFIX, without loading its big table).
EXT_SUFFIX = EXTENSION_SUFFIXES[0]
PURE_ENV = "BUNANCER_PURE_PYTHON"
# Set for a worker by its parent: the build digest the parent checked against the source as it
# loaded that build. A worker finding the same build needs no hashing (nor hashlib: 0.7 MiB).
CHECKED_ENV = "BUNANCER_CORE_CHECKED"
# The per-request path. Everything else (health checks, registry, stats export) runs
# rarely enough that compiling it would only lengthen the build.
COMPILED = (
    "algorithms",
    "body",
    "connections",
    "deadline",
    "decisions",
    "downstream",
    "errors",
    "exchange",
    "faults",
    "framing",
    "headers",
    "listener",
    "plan",
    "pool",
    "server",
    "settings",
    "stats",
    "upstream",
)
# The shared library mypyc builds for the group: bunancer/core/native__mypyc*.so.
GROUP = "bunancer.core.native"

# Run in a fresh interpreter inside the build directory: mypyc's setuptools entry point.
_BUILD_SCRIPT = """
import sys
from mypyc.build import mypycify
from setuptools import setup

setup(
    name="bunancer-native",
    ext_modules=mypycify(
        ["--follow-imports=silent", "--ignore-missing-imports", *sys.argv[2:]],
        group_name=sys.argv[1],
    ),
    script_args=["build_ext", "--inplace"],
)
"""


class CompileError(Exception):
    """mypyc or the C compiler failed; the message carries the end of their output."""


def source_digest(package: Path = PACKAGE) -> str:
    """What a build depends on: the data plane's source (nothing outside `core/`, which
    imports nothing else of bunancer's but `eventloop`) and the interpreter's extension ABI."""
    import hashlib  # here, not above: a worker that loads its parent's checked build skips it

    digest = hashlib.sha256(EXT_SUFFIX.encode())
    for path in sorted((package / "core").glob("*.py")):
        digest.update(b"\0%s\0" % path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def installed_build() -> bool:
    """Compiled modules beside the source: a wheel built with the package (setup.py)."""
    return all((CORE / f"{module}{EXT_SUFFIX}").exists() for module in COMPILED)


def status() -> str:
    """``compiled``, or why the Python source runs: ``pure: ...``."""
    return _status()[0]


def _status() -> tuple[str, str | None]:
    """The status, and the digest of the checkout's build when that is what loads."""
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return f"pure: {PURE_ENV} is set", None
    if installed_build():
        # Python imports an extension module before the source beside it: nothing to switch.
        return "compiled (built with the package)", None
    built = _built_digest()
    if built is None:
        return "pure: not compiled (run `bunancer compile`)", None
    if built != os.environ.get(CHECKED_ENV) and built != source_digest():
        return "pure: the source changed since the last compile (run `bunancer compile`)", None
    return "compiled", built


def _built_digest() -> str | None:
    try:
        return (COMPILED_DIR / DIGEST_FILE).read_text().strip()
    except FileNotFoundError:
        return None


loaded_build: str | None = None  # the digest of the checkout build `activate` put first


class _SourceFinder:
    """Finds the compiled modules' source, which the extension modules beside it (a build
    installed with the package) would otherwise shadow."""

    @staticmethod
    def find_spec(
        name: str, path: Sequence[str] | None = None, target: object = None
    ) -> ModuleSpec | None:
        package, _, module = name.rpartition(".")
        if package != "bunancer.core" or module not in COMPILED:
            return None
        return importlib.util.spec_from_file_location(name, CORE / f"{module}.py")


def activate(search_path: list[str]) -> str:
    """Called by `bunancer.core` as it loads: put the compiled modules first when usable,
    or the source first when asked to run it."""
    global loaded_build
    state, loaded_build = _status()
    if state == "compiled":
        search_path.insert(0, str(COMPILED_DIR))
    elif state.startswith("pure") and installed_build():
        sys.meta_path.insert(0, _SourceFinder())
    return state


def child_environment() -> dict[str, str]:
    """The environment for a process that loads the data plane the way this one did: the
    build this process checked is trusted without hashing the source again."""
    env = dict(os.environ)
    if loaded_build is not None:
        env[CHECKED_ENV] = loaded_build
    return env


def compile_core(force: bool = False, log: Callable[[str], object] = print) -> bool:
    """Build the compiled modules unless an up-to-date build exists; True if it built."""
    if installed_build():
        raise CompileError(
            "this bunancer was installed with its data plane compiled (a wheel): "
            "nothing to build here; `bunancer compile` is for a checkout"
        )
    if not force and _built_digest() == source_digest():
        return False
    try:
        import mypyc  # noqa: F401  (only to say what is missing)
    except ImportError:
        raise CompileError(
            "mypyc is not installed: pip install 'bunancer[native]' (it comes with mypy)"
        ) from None
    # The build's tools, imported here: a process that only loads the data plane never needs them.
    import shutil
    import subprocess
    import tempfile

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bunancer-compile-") as tmp:
        tree = Path(tmp) / "bunancer"
        shutil.copytree(
            PACKAGE, tree, ignore=shutil.ignore_patterns("__pycache__", "_compiled*", "web")
        )
        digest = source_digest(tree)  # of what is built, even if the source moves on
        log(f"compiling {len(COMPILED)} data-plane modules with mypyc (about a minute)...")
        sources = [f"bunancer/core/{module}.py" for module in COMPILED]
        result = subprocess.run(
            [sys.executable, "-c", _BUILD_SCRIPT, GROUP, *sources],
            cwd=tmp,
            capture_output=True,
            text=True,
            check=False,
        )
        built = sorted((tree / "core").glob("*.so"))
        if result.returncode != 0 or len(built) != len(COMPILED) + 1:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            raise CompileError(f"mypyc failed (exit {result.returncode}):\n{tail}")
        _install(built, digest)
    log(f"compiled in {time.monotonic() - started:.0f} s into {COMPILED_DIR}")
    return True


def _install(built: list[Path], digest: str) -> None:
    """Swap the new build in whole: a process starting meanwhile sees a whole build or none."""
    import shutil

    fresh = CORE / f"_compiled.new-{os.getpid()}"
    stale = CORE / f"_compiled.old-{os.getpid()}"
    fresh.mkdir()
    for path in built:
        shutil.copy2(path, fresh / path.name)
    (fresh / DIGEST_FILE).write_text(digest + "\n")
    with contextlib.suppress(FileNotFoundError):
        COMPILED_DIR.rename(stale)
    try:
        fresh.rename(COMPILED_DIR)
    except OSError:  # a compile running beside this one swapped its build in first: keep it
        shutil.rmtree(fresh, ignore_errors=True)
    shutil.rmtree(stale, ignore_errors=True)
