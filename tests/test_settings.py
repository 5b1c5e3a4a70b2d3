"""Settings: every HVD_DC_* variable read once into one typed object, bad values named."""

import pytest

from hvd_dc.settings import Settings


def test_defaults():
    s = Settings.from_environ({})
    assert (s.timeout, s.start_timeout, s.log_level, s.metrics_interval) == (300.0, 600.0, "WARNING", 30.0)
    assert (s.kernels, s.staging, s.fault, s.allow_singleton) == ("fused", "auto", None, False)
    assert s.metrics_file is None and s.tensorboard_dir is None


def test_values_are_parsed():
    s = Settings.from_environ({
        "HVD_DC_TIMEOUT": "12.5", "HVD_DC_START_TIMEOUT": "3", "HVD_DC_LOG_LEVEL": "info",
        "HVD_DC_METRICS_FILE": "/tmp/m.jsonl", "HVD_DC_METRICS_INTERVAL": "0.5", "HVD_DC_TENSORBOARD_DIR": "/tmp/tb",
        "HVD_DC_KERNELS": "torch", "HVD_DC_STAGING": "always", "HVD_DC_FAULT": "stall_server:3",
        "HVD_DC_ALLOW_SINGLETON": "1",
    })
    assert (s.timeout, s.start_timeout, s.log_level, s.metrics_interval) == (12.5, 3.0, "INFO", 0.5)
    assert (s.metrics_file, s.tensorboard_dir) == ("/tmp/m.jsonl", "/tmp/tb")
    assert (s.kernels, s.staging, s.fault, s.allow_singleton) == ("torch", "always", ("stall_server", 3, None), True)
    assert Settings.from_environ({"HVD_DC_FAULT": "kill_server_mid_update:40@1"}).fault == ("kill_server_mid_update", 40, 1)


@pytest.mark.parametrize("name, value", [
    ("HVD_DC_TIMEOUT", "soon"), ("HVD_DC_TIMEOUT", "0"), ("HVD_DC_START_TIMEOUT", "-1"),
    ("HVD_DC_METRICS_INTERVAL", "x"), ("HVD_DC_LOG_LEVEL", "LOUD"), ("HVD_DC_KERNELS", "cuda"),
    ("HVD_DC_STAGING", "sometimes"), ("HVD_DC_FAULT", "stall_server:x"), ("HVD_DC_SERVERS", "0"),
    ("HVD_DC_SERVERS", "two"), ("HVD_DC_CHUNK_BYTES", "-1"), ("HVD_DC_SERVER_THREADS", "0"),
    ("HVD_DC_OVERLAP", "sometimes"), ("HVD_DC_SHM_WINDOWS", "no"),
])
def test_a_bad_value_is_named(name, value):
    with pytest.raises(ValueError, match=name):
        Settings.from_environ({name: value})


def test_replace_keeps_the_rest():
    s = Settings.from_environ({"HVD_DC_KERNELS": "torch"}).replace(timeout=5.0)
    assert s.timeout == 5.0 and s.kernels == "torch"


def test_scale_out_settings():
    s = Settings.from_environ({"HVD_DC_SERVERS": "3", "HVD_DC_CHUNK_BYTES": "0", "HVD_DC_SERVER_THREADS": "4",
                               "HVD_DC_OVERLAP": "off", "HVD_DC_SHM_WINDOWS": "0", "HVD_DC_RANKS_DIR": "/tmp/r"})
    assert (s.servers, s.chunk_bytes, s.server_threads, s.overlap, s.shm_windows, s.ranks_dir) == \
        (3, 0, 4, "off", False, "/tmp/r")
    d = Settings.from_environ({})
    assert (d.servers, d.chunk_bytes, d.server_threads, d.overlap, d.shm_windows) == (1, 4_096_000, 1, "auto", True)
