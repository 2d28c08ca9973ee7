"""Package discovery only (all metadata is in pyproject.toml).

``datamodules/`` sits at the top level of the repository but installs as ``litbrain.datamodules``;
setuptools' automatic discovery cannot map a second root, so the package list is found here:
every folder with an ``__init__.py`` below ``src/litbrain`` and ``datamodules``.
"""

from setuptools import find_packages, setup

setup(
    packages=["litbrain", *(f"litbrain.{p}" for p in find_packages("src/litbrain")),
              "litbrain.datamodules", *(f"litbrain.datamodules.{p}" for p in find_packages("datamodules"))],
)
