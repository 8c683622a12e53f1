"""Defenses that turn B' into B'': fine-tuning (train, schedules, choice)."""
