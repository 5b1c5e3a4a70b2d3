#!/usr/bin/env bash
# hvd_dc under MPICH (hydra mpiexec), e.g. the PyPI `mpich` wheel or a cluster's MPICH/Intel MPI.
#   NP=5 launch/mpiexec_mpich.sh python examples/train_digits.py      # 1 server + 4 workers
#   NP=9 HOSTS=node1:5,node2:4 launch/mpiexec_mpich.sh python train.py
# World rank 0 (the parameter server) is the first slot of the first host.
# Hydra forwards the whole environment; root needs no flag. hvd_dc needs no progress
# thread (MPIR_CVAR_ASYNC_PROGRESS stays 0: on a busy node it halves rank 0's compute).
# `hvd-dc-run -np $NP ...` does the same and also checks /dev/shm.
set -euo pipefail
NP=${NP:-3}
args=(-n "$NP")
if [ -n "${HOSTS:-}" ]; then args+=(-hosts "$HOSTS"); fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec "${MPIEXEC:-mpiexec}" "${args[@]}" "$@"
