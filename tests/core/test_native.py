"""The compiled data plane: used only while it matches the source, never stale.

`./run test` runs `bunancer compile` before the suite, so the whole suite exercises the
compiled modules; these tests check the switch itself on copies of the package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bunancer import native

SHOW = (
    "import bunancer.core as core, bunancer.core.exchange as proxy, bunancer.core.tunnel as tunnel;"
    "print(core.NATIVE); print(proxy.__file__); print(tunnel.__file__)"
)


def copy_package(tmp_path: Path) -> Path:
    """The package (with its build, if any) in a directory of its own."""
    shutil.copytree(
        native.PACKAGE,
        tmp_path / "bunancer",
        ignore=shutil.ignore_patterns("__pycache__", "_compiled.*"),
    )
    return tmp_path / "bunancer"


def load(root: Path, **env: str) -> list[str]:
    """Import the data plane from `root` in a fresh interpreter: its state and files."""
    environment = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    environment.update(env, PYTHONPATH=str(root))
    result = subprocess.run(
        [sys.executable, "-c", SHOW],
        cwd=root,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.splitlines()


def test_digest_covers_the_data_plane_only(tmp_path: Path) -> None:
    package = copy_package(tmp_path)
    before = native.source_digest(package)
    assert native.source_digest(package) == before
    with (package / "core" / "exchange.py").open("a") as f:
        f.write("# edited\n")
    edited = native.source_digest(package)
    assert edited != before
    # Editing the control plane, the config or the CLI never throws the build away.
    for outside in ("config.py", "cli.py", "control/registry.py"):
        with (package / outside).open("a") as f:
            f.write("# not read by the compiled modules\n")
        assert native.source_digest(package) == edited, outside


def test_the_suite_runs_the_compiled_data_plane() -> None:
    """`./run test` compiles first: a failed build must show here, not pass silently."""
    if os.environ.get(native.PURE_ENV):
        pytest.skip(f"{native.PURE_ENV} is set: this run is of the Python source")
    state = native.status()
    assert state == "compiled", f"{state} (./run test compiles before the suite)"
    state, proxy, tunnel = load(native.PACKAGE.parent)
    assert state == "compiled"
    assert proxy.endswith(".so")
    assert "/_compiled/" in proxy
    assert tunnel.endswith("tunnel.py")  # only the per-request modules are compiled


def test_pure_python_on_request(tmp_path: Path) -> None:
    state, proxy, _ = load(native.PACKAGE.parent, **{native.PURE_ENV: "1"})
    assert state.startswith("pure:")
    assert native.PURE_ENV in state
    assert proxy.endswith("exchange.py")


def test_an_edited_module_runs_as_python_until_the_next_compile(tmp_path: Path) -> None:
    if not (native.COMPILED_DIR / native.DIGEST_FILE).exists():
        pytest.skip("no build to go stale (bunancer compile has not run)")
    package = copy_package(tmp_path)
    state, proxy, _ = load(tmp_path)
    assert state == "compiled"
    assert proxy.startswith(str(package))
    with (package / "core" / "headers.py").open("a") as f:
        f.write("EDITED = True\n")
    state, proxy, _ = load(tmp_path)
    assert state.startswith("pure: the source changed")
    assert proxy == str(package / "core" / "exchange.py")


def test_without_a_build_the_source_runs(tmp_path: Path) -> None:
    package = copy_package(tmp_path)
    shutil.rmtree(package / "core" / "_compiled", ignore_errors=True)
    state, proxy, _ = load(tmp_path)
    assert state.startswith("pure: not compiled")
    assert proxy == str(package / "core" / "exchange.py")


def test_a_build_installed_with_the_package_runs_unless_the_source_is_asked_for(
    tmp_path: Path,
) -> None:
    """A wheel puts the extension modules beside their source, where Python prefers them."""
    if not (native.COMPILED_DIR / native.DIGEST_FILE).exists():
        pytest.skip("no build to install (bunancer compile has not run)")
    package = copy_package(tmp_path)
    for built in (package / "core" / "_compiled").glob("*.so"):
        built.rename(package / "core" / built.name)
    shutil.rmtree(package / "core" / "_compiled")
    state, proxy, _ = load(tmp_path)
    assert state == "compiled (built with the package)"
    assert proxy.startswith(str(package / "core" / "exchange."))
    assert proxy.endswith(".so")
    state, proxy, _ = load(tmp_path, **{native.PURE_ENV: "1"})
    assert native.PURE_ENV in state
    assert proxy == str(package / "core" / "exchange.py")
    # `bunancer compile` has nothing to build there, and says so.
    compile_there = subprocess.run(
        [sys.executable, "-m", "bunancer", "compile"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert compile_there.returncode == 1
    assert "installed with its data plane compiled" in compile_there.stderr
