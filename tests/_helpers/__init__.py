"""Helpers shared by the tests: toy models and data, reference runtimes, scripts."""
