"""Experiments that produce the evidence the README reports (run as scripts; importable for tests)."""
