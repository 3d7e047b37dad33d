"""``fedrl aggregator``: a regional tier between devices and the root of a hierarchy.

A region is a server to its devices (``fedrl.server.region.RegionCoordinator`` behind the server's
gRPC or MQTT service) and a client to its parent (an edge ``Link``): ``Upstream`` copies the
parent's versions, takes the parent's rounds and forwards one reduced update per round. It is the
one runtime that imports two others (``server`` and ``edge``), which stay apart from each other.
"""
