"""Install this package's ROS 2 layout into a prefix (by default the running environment's).

`pip install -e .` installs the Python package and the console scripts in `bin/`, but not
setup.py's `data_files`, and puts no executable in `lib/<package>/`: `ros2 launch` and `ros2 run`
find a package through the ament index of the prefixes on AMENT_PREFIX_PATH and its executables in
`<prefix>/lib/<package>/`. This installs what a colcon build of the package would:

    share/ament_index/resource_index/packages/supergf_ros   (ament index entry)
    share/supergf_ros/{package.xml,launch/,config/}         (setup.py's data_files)
    lib/supergf_ros/<console script>                        (setup.py's console_scripts)

The file list is read from setup.py itself (its `data_files` and `console_scripts`), so the two
cannot drift apart. Files are symbolic links into the repository (like `colcon build
--symlink-install`): edits to the launch file or the YAML take effect at once; a file added to or
removed from the list needs this script again (`make venv` reruns it when setup.py, launch/ or
config/ change). The executables link to the console scripts in `<prefix>/bin`.

Usage: python scripts/install_ament_prefix.py [--prefix PREFIX] [--copy]
"""

from __future__ import annotations

import argparse
import os
import runpy
import shutil
import sys
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]


def setup_kwargs(setup_py: Path = ROOT / "setup.py") -> dict:
    """The keyword arguments setup.py passes to setuptools.setup (without running setuptools)."""
    import setuptools

    captured: dict = {}
    cwd = os.getcwd()
    os.chdir(setup_py.parent)  # setup.py globs relative paths
    try:
        with mock.patch.object(setuptools, "setup", lambda **kw: captured.update(kw)):
            runpy.run_path(str(setup_py), run_name="__main__")
    finally:
        os.chdir(cwd)
    return captured


def layout(kwargs: dict) -> tuple[str, list[tuple[Path, Path]], list[str]]:
    """(package name, [(destination relative to the prefix, source)], console script names)."""
    name = kwargs["name"]
    files = []
    for dest_dir, sources in kwargs.get("data_files", []):
        for src in sources:
            files.append((Path(dest_dir) / Path(src).name, ROOT / src))
    scripts = [
        entry.split("=")[0].strip()
        for entry in kwargs.get("entry_points", {}).get("console_scripts", [])
    ]
    return name, files, scripts


def install(prefix: Path, copy: bool = False) -> list[Path]:
    name, files, scripts = layout(setup_kwargs())
    # start clean: a file dropped from setup.py must not linger in the prefix
    for owned in (prefix / "share" / name, prefix / "lib" / name):
        if owned.is_symlink() or owned.is_file():
            owned.unlink()
        elif owned.is_dir():
            shutil.rmtree(owned)
    installed = []
    for rel, src in files:
        if not src.is_file():
            raise SystemExit(f"install_ament_prefix: {src} (from setup.py's data_files) is missing")
        installed.append(_place(prefix / rel, src, copy))
    bin_dir = prefix / "bin"
    for script in scripts:
        target = bin_dir / script
        if not target.is_file():
            raise SystemExit(
                f"install_ament_prefix: console script {target} not found (pip install -e . first)"
            )
        installed.append(_place(prefix / "lib" / name / script, target, copy=False))
    return installed


def _place(dest: Path, src: Path, copy: bool) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    if copy:
        shutil.copy2(src, dest)
    else:
        dest.symlink_to(os.path.relpath(src, dest.parent))
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--prefix", type=Path, default=Path(sys.prefix), help="default: %(default)s"
    )
    parser.add_argument("--copy", action="store_true", help="copy the data files, do not link")
    args = parser.parse_args(argv)
    installed = install(args.prefix.resolve(), copy=args.copy)
    print(f"install_ament_prefix: {len(installed)} files under {args.prefix}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
