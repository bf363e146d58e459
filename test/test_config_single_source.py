"""One source of configuration: the Localizer's options feed the node, the params file and the
`localize` command, and `Localizer.update` is the one way to change a running localizer."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from supergf_ros.localization.config import OPTIONS, check_conf
from supergf_ros.localization.localizer import Localizer
from supergf_ros.ros.parameters import PARAMETERS, localizer_conf, validate_parameter

REPO = Path(__file__).resolve().parents[1]


def test_params_file_values_are_the_declared_defaults():
    params = yaml.safe_load((REPO / "config" / "localize.yaml").read_text())["/**"]
    declared = params["ros__parameters"]
    assert set(declared) == set(PARAMETERS)
    for name, value in declared.items():
        assert value == PARAMETERS[name].default, name
    # the file's defaults are the Localizer's defaults
    assert {**Localizer.default_conf, **localizer_conf(declared)} == Localizer.default_conf


def test_node_declares_every_localizer_option_with_its_meaning():
    for name, opt in OPTIONS.items():
        param = PARAMETERS[name]
        assert param.localizer and param.description == opt.description
        assert param.read_only is not opt.runtime
    assert Localizer.default_conf == {n: o.default for n, o in OPTIONS.items()}


def test_one_validation_for_node_and_localizer():
    assert "top_k must be in [1, 100]" in validate_parameter("top_k", 0)
    with pytest.raises(ValueError, match=r"top_k must be in \[1, 100\]"):
        check_conf({"top_k": 0})
    assert validate_parameter("ratio_threshold", 0.0) == ""  # the "off" value of the node
    assert check_conf({"ratio_threshold": None}) == {"ratio_threshold": None}
    assert "max_keypoints" in validate_parameter("max_keypoints", 8)
    assert "unknown backend" in validate_parameter("backend", "cuda_magic")
    with pytest.raises(ValueError, match="must be an integer"):
        check_conf({"min_inliers": 12.5})
    assert check_conf({"min_inliers": 12.0}) == {"min_inliers": 12}


def test_localize_command_defaults_come_from_the_options():
    from supergf_ros.localization import localize

    parser = argparse.ArgumentParser()
    localize.add_parser(parser.add_subparsers())
    args = parser.parse_args(["localize", "m.h5", "d", "--queries", "q", "--out", "o"])
    conf = localize.localizer_conf_from_args(args)
    assert set(conf) <= set(OPTIONS)
    assert {**Localizer.default_conf, **conf} == Localizer.default_conf


def test_update_changes_runtime_options_only(data_dir: Path, tmp_path: Path):
    from supergf_ros.mapping.build_map import build_map

    path = tmp_path / "sift.h5"
    build_map(
        data_dir / "strecha" / "fountain-P11",
        path,
        image_names=["0000.jpg", "0002.jpg", "0004.jpg"],
        features="sift",
        extractor_conf={"max_keypoints": 256},
        global_name="gem",
        progress=False,
    )
    loc = Localizer.from_map(path)
    conf_before = loc.conf
    loc.update(top_k=2, ratio_threshold=0.9)
    assert loc.conf["top_k"] == 2 and loc.conf["ratio_threshold"] == 0.9
    assert conf_before["top_k"] == 5  # a query in progress keeps its configuration
    with pytest.raises(ValueError, match="fixed at start-up"):
        loc.update(backend="torch")
    with pytest.raises(ValueError, match="top_k"):
        loc.update(top_k=0, min_inliers=20)
    assert loc.conf["min_inliers"] == 12  # nothing of a refused update applies
