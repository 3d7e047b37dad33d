"""What server and edge agents share: the records they exchange, the protobuf schema, vector
codecs, durable files and TLS helpers."""
