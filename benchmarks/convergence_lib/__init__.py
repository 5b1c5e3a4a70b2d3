"""Shared code of the DC-ASGD convergence benchmark (benchmarks/convergence.py).

* :mod:`.common`   the tasks (data + model), the training recipe, evaluation
* :mod:`.simulate` the deterministic delay simulator, built on hvd_dc's ServerState
* :mod:`.rank`     the per-rank training script run under mpiexec (the real system)
* :mod:`.report`   aggregation over seeds, Markdown/JSON tables, plots
"""
