"""Committed log entries turned into state changes, exactly once."""
