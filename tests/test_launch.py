"""hvd-dc-run (hvd_dc.launch): flag selection per MPI and launcher, /dev/shm check, --help,
the world-of-one check, and the Horovod install helper's C++17 patch."""

import subprocess
import sys
from pathlib import Path

import pytest

from hvd_dc import launch
from hvd_dc.install_horovod import patch_cxx_standard

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module", ["launch", "install_horovod", "report"])
def test_console_scripts_have_help(module, capsys):
    import importlib

    main = importlib.import_module(f"hvd_dc.{module}").main
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_hvd_dc_run_help_in_a_subprocess():
    out = subprocess.run([sys.executable, "-m", "hvd_dc.launch", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "hvd-dc-run" in out.stdout and "/dev/shm" in out.stdout


def test_console_scripts_are_declared():
    text = (ROOT / "pyproject.toml").read_text()
    for line in ('hvd-dc-run = "hvd_dc.launch:main"', 'hvd-dc-install-horovod = "hvd_dc.install_horovod:main"',
                 'hvd-dc-report = "hvd_dc.report:main"'):
        assert line in text


def test_openmpi_flags_as_root_and_oversubscribed():
    plan = launch.build_command(5, ["python", "t.py"], launcher="mpiexec", mpiexec="/x/mpiexec", mpi="openmpi",
                                cpus=2, is_root=True, environ={"HVD_DC_TIMEOUT": "9", "PATH": "/bin"})
    cmd = plan.command
    assert cmd[:3] == ["/x/mpiexec", "-n", "5"]
    assert "--allow-run-as-root" in cmd and "--oversubscribe" in cmd
    assert cmd[cmd.index("--bind-to") + 1] == "none"
    # hvd_dc's variables are exported explicitly (-x), PATH is not touched
    exported = [cmd[i + 1] for i, c in enumerate(cmd) if c == "-x"]
    assert "HVD_DC_TIMEOUT" in exported and "OMP_NUM_THREADS" in exported and "PATH" not in exported
    assert plan.env["OMPI_ALLOW_RUN_AS_ROOT"] == "1" and plan.env["OMP_NUM_THREADS"] == "1"
    assert cmd[-2:] == ["python", "t.py"]


def test_openmpi_not_root_enough_cores():
    plan = launch.build_command(3, ["python", "t.py"], launcher="mpiexec", mpiexec="mpiexec", mpi="openmpi",
                                cpus=12, is_root=False, environ={})
    assert "--allow-run-as-root" not in plan.command and "--oversubscribe" not in plan.command
    assert plan.env["OMP_NUM_THREADS"] == "4"  # 12 cores / 3 ranks
    assert "OMPI_ALLOW_RUN_AS_ROOT" not in plan.env


def test_mpich_flags_and_async_progress():
    plan = launch.build_command(3, ["python", "t.py"], launcher="mpiexec", mpiexec="mpiexec", mpi="mpich",
                                cpus=2, is_root=True, environ={"OMP_NUM_THREADS": "2"}, hosts="a:2,b:1")
    assert plan.command == ["mpiexec", "-n", "3", "-hosts", "a:2,b:1", "python", "t.py"]
    assert "OMP_NUM_THREADS" not in plan.env  # the user's setting wins
    assert "MPIR_CVAR_ASYNC_PROGRESS" not in plan.env
    on = launch.build_command(3, ["p"], launcher="mpiexec", mpiexec="mpiexec", mpi="mpich", environ={},
                              async_progress=True)
    assert on.env["MPIR_CVAR_ASYNC_PROGRESS"] == "1"


@pytest.mark.parametrize("mpi, plugin", [("openmpi", "pmix"), ("mpich", "pmi2")])
def test_srun_picks_pmi_plugin_and_block_distribution(mpi, plugin):
    plan = launch.build_command(9, ["python", "t.py"], launcher="srun", mpi=mpi, environ={"SLURM_JOB_ID": "1"})
    assert plan.command[:2] == ["srun", f"--mpi={plugin}"]
    assert "--distribution=block" in plan.command  # world rank 0, the server, is the first task
    assert plan.command[plan.command.index("--ntasks") + 1] == "9"
    forced = launch.build_command(9, ["p"], launcher="srun", mpi="mpich", srun_mpi="pmix", environ={})
    assert forced.command[1] == "--mpi=pmix"


def test_needs_a_server_and_a_worker():
    with pytest.raises(ValueError, match="parameter server"):
        launch.build_command(1, ["p"], launcher="mpiexec", mpiexec="mpiexec", mpi="mpich", environ={})


def test_detects_the_mpi_of_this_environment():
    exe = launch.find_mpiexec()
    assert exe is not None
    from mpi4py import MPI

    expected = "openmpi" if "Open MPI" in MPI.Get_library_version() else "mpich"
    assert launch.detect_mpi(exe) == expected


def test_window_bytes_counts_two_copies_per_worker():
    n = 1_000_000
    b = launch.window_bytes(n, 4)
    assert 8 * n * 4 <= b < 8 * n * 4 + 4096  # fp32 gradient + fp32 weights, 4 workers
    assert launch.window_bytes(n, 4, fp16_wire=True) < b


def test_shm_check(tmp_path):
    assert launch.check_shm(1, str(tmp_path)) is None
    msg = launch.check_shm(1 << 60, str(tmp_path))
    assert msg is not None and "--shm-size" in msg and "SIGBUS" in msg


def test_cli_dry_run_and_shm_refusal(capsys):
    rc = launch.main(["--dry-run", "-np", "3", "--model-params", "1e3", "--metrics-file", "m.jsonl",
                      "python", "train.py", "--epochs", "2"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "-n 3" in out.out and "python train.py --epochs 2" in out.out
    assert "export HVD_DC_METRICS_FILE=" in out.out and "/dev/shm ok" in out.out
    rc = launch.main(["--dry-run", "-np", "3", "--model-params", "1e15", "python", "train.py"])
    assert rc == 3 and "/dev/shm" in capsys.readouterr().err
    assert launch.main(["--check-only", "-np", "9", "--model-params", "1e6"]) == 0
    assert launch.main(["--check-only", "-np", "9", "--model-params", "1e15"]) == 3


def test_world_of_one_under_a_multi_task_launcher_is_refused():
    assert launch.check_world_size(4, {"SLURM_NTASKS": "4", "SLURM_STEP_ID": "0"}) is None
    assert launch.check_world_size(1, {}) is None
    assert launch.check_world_size(1, {"SLURM_NTASKS": "4"}) is None  # the batch shell, not a step
    msg = launch.check_world_size(1, {"SLURM_NTASKS": "4", "SLURM_STEP_ID": "0"})
    assert msg and "--mpi=pmix" in msg
    assert launch.check_world_size(1, {"PMI_SIZE": "3"})
    assert launch.check_world_size(1, {"PMI_SIZE": "3", "HVD_DC_ALLOW_SINGLETON": "1"}) is None


def test_horovod_cxx17_patch(tmp_path):
    (tmp_path / "horovod" / "torch").mkdir(parents=True)
    (tmp_path / "CMakeLists.txt").write_text("project(x)\nset(CMAKE_CXX_STANDARD 14)\n")
    (tmp_path / "horovod" / "torch" / "CMakeLists.txt").write_text(
        'if(NOT Pytorch_VERSION VERSION_LESS "1.5.0")\n    set(CMAKE_CXX_STANDARD 14)\nendif()\n')
    assert patch_cxx_standard(tmp_path) == ["CMakeLists.txt", "horovod/torch/CMakeLists.txt"]
    assert "set(CMAKE_CXX_STANDARD 17)" in (tmp_path / "CMakeLists.txt").read_text()
    assert "14" not in (tmp_path / "horovod" / "torch" / "CMakeLists.txt").read_text().replace("1.5.0", "")
    with pytest.raises(RuntimeError):
        patch_cxx_standard(tmp_path)  # nothing left to patch: refuse rather than build with c++14


def test_launch_templates_are_valid_shell():
    for f in sorted((ROOT / "launch").glob("*.sh")) + sorted((ROOT / "launch").glob("*.sbatch")):
        res = subprocess.run(["bash", "-n", str(f)], capture_output=True, text=True)
        assert res.returncode == 0, f"{f.name}: {res.stderr}"


def test_sbatch_template_without_a_program_says_so():
    # run as a plain script: it must stop before srun, so no Slurm is needed here
    res = subprocess.run(["bash", str(ROOT / "launch" / "hvd_dc.sbatch")], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "no program given" in res.stderr, res.stderr


def test_hvd_dc_run_launches_a_real_job(tmp_path):
    """hvd-dc-run under this environment's MPI (MPICH or Open MPI) runs the digits example."""
    from mpi_run import run_mpi

    cmd = [sys.executable, "-m", "hvd_dc.launch", "-np", "3", "--timeout", "60",
           sys.executable, str(ROOT / "examples" / "train_digits.py"), "--epochs", "2"]
    res = run_mpi(3, "", out_dir=tmp_path, timeout=180, command=cmd)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "epoch  2" in res.stdout and "2 workers" in res.stdout


@pytest.mark.parametrize("mpi, launcher, flag", [("openmpi", "mpiexec", ["--map-by", "node"]),
                                                  ("mpich", "mpiexec", ["-rr"]),
                                                  ("mpich", "srun", ["--distribution=cyclic"])])
def test_several_servers_are_placed_one_per_node(mpi, launcher, flag):
    plan = launch.build_command(10, ["python", "t.py"], launcher=launcher, mpiexec="mpiexec", mpi=mpi,
                                hosts="a:5,b:5" if launcher == "mpiexec" else None, cpus=8, is_root=False,
                                environ={}, servers=2)
    cmd = plan.command
    assert any(cmd[i:i + len(flag)] == flag for i in range(len(cmd))), cmd
    one = launch.build_command(10, ["python", "t.py"], launcher=launcher, mpiexec="mpiexec", mpi=mpi,
                               hosts="a:5,b:5" if launcher == "mpiexec" else None, cpus=8, is_root=False, environ={})
    assert not any(one.command[i:i + len(flag)] == flag for i in range(len(one.command)))
