# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv/ first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MSGS_STAMP := $(VENV)/.msgs_built

.PHONY: venv demo test lint format clean

venv: $(STAMP) $(MSGS_STAMP)

$(STAMP): requirements.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# ROS 2 messages (supergf_ros_msgs, rosidl) built with colcon against the venv's ROS wheels.
$(MSGS_STAMP): $(STAMP) scripts/build_msgs.sh supergf_ros_msgs/CMakeLists.txt \
		supergf_ros_msgs/package.xml $(wildcard supergf_ros_msgs/msg/*.msg scripts/vendor/tf2_msgs/*)
	scripts/build_msgs.sh $(VENV)
	touch $(MSGS_STAMP)

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
