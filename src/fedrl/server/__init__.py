"""The deployed server: the transport-agnostic coordinator, its durable store, and the gRPC and
MQTT adapters over it."""
