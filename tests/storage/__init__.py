"""Storage tests: the conformance suite and backend-specific tests."""
