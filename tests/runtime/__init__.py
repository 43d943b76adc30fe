"""Runtime tests: the Trio engine, its supervision, timers, events and shutdown."""
