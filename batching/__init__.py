"""Dynamic batching: per-model queues, the batching policy, and batch assembly."""
