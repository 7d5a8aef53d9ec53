"""Hostile and broken devices (issue 10): attacks, fuzzing, kill -9."""
