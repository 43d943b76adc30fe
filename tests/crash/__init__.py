"""Crash tests: real engine processes on a SQLite file, killed with SIGKILL and recovered."""
