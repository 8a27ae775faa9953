import os

# Eight fake CPU devices for the sharding tests; harmless for the others. Must be set before jax
# is imported anywhere in the test process.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: a slower end-to-end test (still run in CI)")
