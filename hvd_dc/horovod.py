"""Run an unmodified Horovod PyTorch script with DC-ASGD: ``import hvd_dc.horovod``.

A Horovod script changes two lines::

    import horovod.torch as hvd
    import hvd_dc.horovod            # added; must come before hvd.init()
    hvd.init()                       # unchanged: now spans the workers only
    ...
    optimizer = hvd_dc.DistributedDCOptimizer(        # was: hvd.DistributedOptimizer(
        optimizer, named_parameters=model.named_parameters())

Importing this module does, once per process:

1. ``hvd_dc.init()``: world rank 0 becomes the parameter server here and never returns
   (it exits when the workers are done), so none of the script's code after the import
   runs on it, and no Horovod collective ever waits for it.
2. ``horovod.torch.init(comm=<the workers' communicator>)`` on every other rank, so
   Horovod's ranks, sizes and collectives (``hvd.allreduce``, ``hvd.broadcast_parameters``,
   ``hvd.broadcast_optimizer_state``, samplers built from ``hvd.size()``/``hvd.rank()``)
   cover the workers only, exactly as ``hvd_dc.size()``/``hvd_dc.rank()`` do. The script's
   own ``hvd.init()`` afterwards is a no-op (Horovod initialises once per process).

Launch with one more process than workers: ``horovodrun -np 5`` (Open MPI) or
``mpiexec -n 5`` gives 1 server + 4 workers.

If you prefer no import side effect, do the same explicitly::

    import hvd_dc, horovod.torch as hvd
    hvd_dc.init()                            # rank 0 serves here
    hvd.init(comm=hvd_dc.worker_comm())
"""

from __future__ import annotations

from .interop import init_horovod, worker_comm

__all__ = ["init_horovod", "worker_comm"]

init_horovod()
