"""Float64 torch references: the spec of every op in code (slow, readable, for tests)."""
