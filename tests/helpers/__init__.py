"""Helpers shared by the tests: fake datasets in their real formats, small collections, encoders,
commands run in-process and what they leave, and the service as a child process (which the service
benchmarks start the same way)."""
