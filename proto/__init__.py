"""The KServe v2 / Triton gRPC protocol: .proto sources and their generated stubs."""
