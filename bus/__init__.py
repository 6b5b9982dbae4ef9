"""mgm.bus: everything ZeroMQ and msgpack, and no MGM semantics.

The envelope and codec, the request/reply server and client, per-stream
sequence numbers with snapshots to resync from, heartbeats, authentication.
Importing this package does not import zmq; the socket modules do.
"""
