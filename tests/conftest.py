"""Test-session set-up: generated suites and search indexes go to a private cache dir."""

import os
import shutil
import tempfile

import pytest

# Set before deepeyes_gym is imported anywhere, so subprocesses (vector envs) inherit it too.
_CACHE = tempfile.mkdtemp(prefix="deepeyes-gym-test-cache-")
os.environ["DEEPEYES_GYM_CACHE"] = _CACHE


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_CACHE, ignore_errors=True)


def pytest_report_header(config):
    """Say which sandbox isolation this run is tested at (bubblewrap, unshare or rlimits)."""
    from deepeyes_gym.envs.sandbox import isolation_prerequisites

    p = isolation_prerequisites()
    return "code sandbox: " + ", ".join(f"{k}={'ok' if v is None else 'no (' + v + ')'}" for k, v in p.items())


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster of 8 logical CPUs for one test module (the Ray tests' ``usefixtures``)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
