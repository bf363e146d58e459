# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv/ first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The ROS 2 command-line tools and launch (upstream sources, not on PyPI), when present.
ROS2_SOURCES ?= ../shared/vendor/ros2
HAVE_ROS2_SOURCES := $(wildcard $(ROS2_SOURCES)/ros2cli/setup.py)
# The name records whether the sources were there (then composition_interfaces is built too), so
# that their arrival later reruns the build.
MSGS_STAMP := $(VENV)/.msgs_built$(if $(HAVE_ROS2_SOURCES),_composition)
PREFIX_STAMP := $(VENV)/.ament_prefix
ROS2_STAMP := $(VENV)/.ros2_tools

.PHONY: venv demo test lint format clean

venv: $(STAMP) $(MSGS_STAMP) $(PREFIX_STAMP) $(if $(HAVE_ROS2_SOURCES),$(ROS2_STAMP))

$(STAMP): requirements.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# ROS 2 messages (supergf_ros_msgs, rosidl) built with colcon against the venv's ROS wheels.
$(MSGS_STAMP): $(STAMP) scripts/build_msgs.sh supergf_ros_msgs/CMakeLists.txt \
		supergf_ros_msgs/package.xml $(wildcard supergf_ros_msgs/msg/*.msg scripts/vendor/tf2_msgs/*)
	scripts/build_msgs.sh $(VENV) $(ROS2_SOURCES)
	touch $@

# This package's ament index entry, share/supergf_ros/ and lib/supergf_ros/ in the venv prefix
# (setup.py's data_files and console scripts, which `pip install -e .` leaves out).
$(PREFIX_STAMP): $(STAMP) scripts/install_ament_prefix.py setup.py package.xml \
		resource/supergf_ros $(wildcard launch/*.launch.py config/*.yaml config/*.rviz)
	$(BIN)/python scripts/install_ament_prefix.py
	touch $@

# `ros2` (launch, param, topic, node, service, ...) in $(BIN), finding the venv's ament index.
$(ROS2_STAMP): $(MSGS_STAMP) $(PREFIX_STAMP) scripts/install_ros2_tools.sh \
		$(wildcard $(ROS2_SOURCES)/SOURCES.txt)
	scripts/install_ros2_tools.sh $(VENV) $(ROS2_SOURCES)
	touch $@

# SuperPoint when the shared weights are there (else the demo says so and uses SIFT).
SUPERPOINT_WEIGHTS ?= $(wildcard ../shared/weights/superpoint_v1.pth)

demo: venv
	$(BIN)/supergf-ros demo $(if $(SUPERPOINT_WEIGHTS),--superpoint-weights $(SUPERPOINT_WEIGHTS))

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build install log .cache .pytest_cache
