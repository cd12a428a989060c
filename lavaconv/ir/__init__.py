"""The network description (plain dataclasses that answer questions about themselves) and the
Loihi fixed-point constants every stage shares."""
