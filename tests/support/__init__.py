"""Test-only models and helpers."""
