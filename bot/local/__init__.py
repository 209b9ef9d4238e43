"""Local mode: the real bot behind an embedded Bot API emulator, with a web chat page."""
