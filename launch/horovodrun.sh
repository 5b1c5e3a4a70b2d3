#!/usr/bin/env bash
# hvd_dc under horovodrun: a Horovod script ported with `import hvd_dc.horovod` (docs/HOROVOD.md).
#   NP=3 launch/horovodrun.sh python examples/port_horovod/train_hvd_dc.py   # 1 server + 2 workers
#   NP=9 HOSTS=node1:5,node2:4 launch/horovodrun.sh python train.py
# -np counts the server too. horovodrun needs Open MPI (or Intel MPI/Spectrum): it detects
# the MPI from `mpirun --version`, which MPICH 5's hydra answers without the word MPICH,
# so with the `mpich` wheel it fails ("horovod does not find an installed MPI"); use
# launch/mpiexec_mpich.sh there. horovodrun adds --allow-run-as-root itself.
set -euo pipefail
NP=${NP:-3}
args=(-np "$NP")
if [ -n "${HOSTS:-}" ]; then args+=(-H "$HOSTS"); else args+=(-H "localhost:$NP"); fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# Open MPI 5 misreads horovodrun 0.28.1's default "-bind-to none" (single dash: "none" is taken
# for the program); pass the binding in its double-dash form.
exec horovodrun "${args[@]}" --binding-args="--bind-to none --map-by slot" "$@"
