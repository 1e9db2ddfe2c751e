"""The suite's command-line options, and the fixtures package loaded as a plugin."""

from __future__ import annotations

import pytest

from meshfed.options import add_options

pytest_plugins = ["fixtures.suite", "fixtures.mesh", "fixtures.reporting"]


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser.getgroup("meshfed", "meshfed: the mesh under test").addoption)
