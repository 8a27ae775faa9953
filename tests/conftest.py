import atexit
import os
import shutil
import tempfile

# Eight fake CPU devices for the sharding tests; harmless for the others. Must be set before jax
# is imported anywhere in the test process.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One JAX compilation cache for the session, shared by this process and the scripts the tests
# start (they inherit the environment): a program compiled once, by an earlier test or an
# earlier run of the same script (a resumed run, a second seed), is loaded instead of compiled
# again. Loading gives the executable a compilation would, so every check is the same. A fresh
# directory per session, removed at exit: nothing carries over from one test run to the next. A
# JAX_COMPILATION_CACHE_DIR already set is left alone.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="r1jax-tests-jax-cache-")
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ.update(JAX_COMPILATION_CACHE_DIR=_CACHE,
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: a slower end-to-end test (still run in CI)")
  config.addinivalue_line("markers", "bench: a CPU smoke run of a GPU benchmark script; left out "
                          "of the default run (pytest.ini), run with -m bench")
