"""infergate's private protobuf descriptor pool, shared by its generated stubs."""

from google.protobuf import descriptor_pool

# Separate from descriptor_pool.Default() so tritonclient's own `inference` stubs can
# be imported into the same process (tests, the bench client) without symbol clashes.
POOL = descriptor_pool.DescriptorPool()
