"""Fixture plugins shared by the whole test suite."""

pytest_plugins = ["elastiserve.testing.pytest_plugin"]
