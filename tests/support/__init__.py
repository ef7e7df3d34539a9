"""Helpers shared by the test modules (no tests here). A test file imports helpers from
this package or from tests.conftest, never from another test file."""
