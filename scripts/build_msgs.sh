#!/usr/bin/env bash
# Build the supergf_ros_msgs interface package (rosidl: C, C++ and Python type support) with
# colcon + ament_cmake against the ROS 2 wheels of a virtual environment, and install it into that
# environment so that `import supergf_ros_msgs.msg` works from its python and console scripts.
#
# Usage: scripts/build_msgs.sh [VENV] [ROS2_SOURCES]   (defaults .venv and ../shared/vendor/ros2,
#        relative to the repository root; run from anywhere)
#
# With ROS2_SOURCES present (the upstream ROS 2 tool sources, see scripts/install_ros2_tools.sh),
# its interface package composition_interfaces, which launch_ros imports, is built too.
#
# The ROS 2 wheels' CMake export files hard-code the wheel builder's include paths
# (/opt/python/cpXY-cpXY/include/pythonX.Y and its numpy include directory); they are rewritten to
# this environment's paths first. The patch is idempotent.
set -eo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$(cd "${1:-$ROOT/.venv}" && pwd)"
ROS2_SOURCES="${2:-$ROOT/../shared/vendor/ros2}"
[ -d "$ROS2_SOURCES" ] && ROS2_SOURCES="$(cd "$ROS2_SOURCES" && pwd)"
PY="$VENV/bin/python"
BUILD_BASE="$ROOT/build/msgs"

if [ ! -x "$PY" ]; then
    echo "build_msgs: no python at $PY; create the environment first (make venv)" >&2
    exit 1
fi

start=$(date +%s)

# 1. Patch the wheels' CMake exports (idempotent: only files still naming /opt/python change).
"$PY" - "$VENV" <<'PYEOF'
import re
import sys
import sysconfig
from pathlib import Path

import numpy

venv = Path(sys.argv[1])
py_include = sysconfig.get_paths()["include"]
np_include = numpy.get_include()
numpy_pat = re.compile(r"/opt/python/cp\d+-cp\d+/lib/python\d+\.\d+/site-packages/numpy/_core/include")
python_pat = re.compile(r"/opt/python/cp\d+-cp\d+/include/python\d+\.\d+")
patched = 0
for path in (venv / "share").rglob("*.cmake"):
    text = path.read_text()
    if "/opt/python/" not in text:
        continue
    new = python_pat.sub(py_include, numpy_pat.sub(np_include, text))
    if new != text:
        path.write_text(new)
        patched += 1
print(f"build_msgs: patched {patched} CMake export file(s) for {py_include} and {np_include}")
PYEOF

# 2. Build and install into the environment's prefix. Its lib/ is on the library path that the
#    ROS wheels' bootstrapper sets, and its share/ holds the ament index of the other packages.
export VIRTUAL_ENV="$VENV"
export PATH="$VENV/bin:$PATH"
export AMENT_PREFIX_PATH="$VENV"
export CMAKE_PREFIX_PATH="$VENV"
export MAKEFLAGS="${MAKEFLAGS:--j$(nproc)}"
cd "$ROOT"
BASE_PATHS=(supergf_ros_msgs)
#    TF: tf2_msgs is not on PyPI; build the vendored TFMessage-only copy unless one is installed.
if ! "$PY" -c "import tf2_msgs.msg" 2>/dev/null || [ -f "$BUILD_BASE/tf2_msgs/CMakeCache.txt" ]; then
    BASE_PATHS+=(scripts/vendor/tf2_msgs)
fi
#    composition_interfaces for launch_ros, when its sources are there (colcon reads the source
#    folder only: builds go to --build-base, so a read-only folder is fine).
CHECK="from supergf_ros_msgs.msg import LocalizationStatus; from tf2_msgs.msg import TFMessage"
if [ -f "$ROS2_SOURCES/composition_interfaces/package.xml" ]; then
    BASE_PATHS+=("$(cd "$ROS2_SOURCES/composition_interfaces" && pwd)")
    CHECK="$CHECK; from composition_interfaces.srv import LoadNode"
fi
"$VENV/bin/colcon" --log-base "$BUILD_BASE/log" build \
    --base-paths "${BASE_PATHS[@]}" \
    --build-base "$BUILD_BASE" \
    --install-base "$VENV" --merge-install \
    --event-handlers console_direct- summary+ \
    --cmake-args -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release

# 3. Check from a fresh interpreter of the environment.
"$PY" -c "$CHECK" || {
    echo "build_msgs: built, but the generated messages do not import" >&2
    exit 1
}
echo "build_msgs: ${BASE_PATHS[*]##*/} installed into $VENV in $(( $(date +%s) - start )) s"
