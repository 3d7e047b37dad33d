"""Edge agent runtime: the loop a device runs (register, pull, train, push, heartbeat), its durable
state, and its links to the server."""
