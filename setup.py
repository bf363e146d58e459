"""ROS 2 (ament_python) package `supergf_ros`, also pip-installable."""

from glob import glob

from setuptools import find_packages, setup

package_name = "supergf_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(include=[package_name, f"{package_name}.*"]),
    package_data={package_name: ["weights/*.pt", "weights/*.md"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{package_name}"]),
        (f"share/{package_name}", ["package.xml"]),
        (f"share/{package_name}/launch", glob("launch/*.launch.py")),
        (f"share/{package_name}/config", glob("config/*.yaml") + glob("config/*.rviz")),
    ],
    install_requires=["setuptools"],
    extras_require={"tensorrt": ["tensorrt", "pycuda"]},
    zip_safe=True,
    maintainer="supergf_ros developers",
    maintainer_email="supergf-ros@example.org",
    description="Onboard hierarchical visual localization with SuperGF for ROS 2.",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "supergf-ros = supergf_ros.cli:main",
            "localizer_node = supergf_ros.ros.node:main",
            "managed_localizer_node = supergf_ros.ros.node:main_managed",
        ],
    },
)
