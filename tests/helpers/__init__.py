"""Helpers shared by the tests: fake datasets in their real formats, small collections, encoders."""
