"""The repository root is the ``omnifield`` package: every top-level folder imports as ``omnifield.<folder>``.

The package list is computed, so a new subpackage needs no edit here.
"""

import os

from setuptools import find_packages, setup

TOP_LEVEL = ["datasets", "fields", "renderers", "cuda", "scenes", "distill", "viewer", "cli"]

packages = ["omnifield"]
for top in TOP_LEVEL:
    if not os.path.isfile(os.path.join(top, "__init__.py")):
        continue
    packages.append(f"omnifield.{top}")
    packages += [f"omnifield.{top}.{sub}" for sub in find_packages(top)]

setup(
    package_dir={"omnifield": "."},
    packages=packages,
    package_data={"omnifield.cuda": ["csrc/**/*"]},
)
