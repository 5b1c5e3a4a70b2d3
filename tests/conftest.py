import os
import sys

# the reference and fixture modules sit beside the tests
sys.path.insert(0, os.path.dirname(__file__))


def pytest_report_header(config):
    """Say up front whether the Horovod interop tests will run."""
    try:
        import horovod
        import horovod.torch  # noqa: F401

        return f"horovod {horovod.__version__}: Horovod interop tests will run"
    except Exception as exc:
        return (f"horovod not importable ({type(exc).__name__}): Horovod interop tests will be SKIPPED "
                "(scripts/test_horovod.sh builds Horovod and runs them)")
