"""End-to-end harness: the real ``python -m bot`` process against loopback fakes."""
