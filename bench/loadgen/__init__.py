"""The load-test harness behind `infergate bench`: KServe v2 gRPC load against infergate, Triton or MLServer."""
