"""Sans-I/O protocol cores: bytes in, events out, so every rule is testable without sockets."""
