"""Shared test helpers. Area fixtures live in each tests/<area>/conftest.py.

The fakesmtp pytest plugin (fixtures `fakesmtp`, `fakesmtp_factory`) is loaded
through the `pytest11` entry point of our own package.
"""
