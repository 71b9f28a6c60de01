"""The ways infergate speaks gRPC: its own HTTP/2 (native), grpcio in-process, and grpcio worker processes."""
