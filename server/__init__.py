"""gRPC front end: the KServe v2 servicer, CLI, and process lifecycle."""
