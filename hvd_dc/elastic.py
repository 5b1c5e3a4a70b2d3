"""``hvd.elastic``: Horovod's elastic training is not supported; this says what to use.

Horovod elastic (``hvd.elastic.run``, ``TorchState``, ``ElasticSampler``, launched by
``horovodrun --min-np/--max-np`` with host discovery) keeps training while workers join
or leave, restoring the last ``state.commit()`` on every change. hvd_dc does not: its
parameter server's windows are allocated collectively over a fixed MPI world (they cannot
grow or shrink), and no driver restarts workers. What it has instead covers the same
need at the job's scale, exactly: with ``DistributedOptimizer(..., checkpoint_path=...,
checkpoint_every_updates=... or checkpoint_every_seconds=...)`` the server writes its
whole state atomically, and a job relaunched with **any number of workers** resumes from
the last checkpoint (README, "Checkpoint and restart").

So every name here raises :class:`NotImplementedError` (a ``RuntimeError``) with that
advice as soon as a script uses it (``@hvd.elastic.run`` fails at decoration), rather than
training without the elasticity the script asked for.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run", "State", "ObjectState", "TorchState", "ElasticSampler", "ELASTIC_ADVICE"]

ELASTIC_ADVICE = (
    "hvd_dc does not support Horovod elastic training (hvd.elastic): its parameter server serves a fixed set of "
    "MPI ranks. For restarts with another number of workers, pass checkpoint_path= (and checkpoint_every_updates= "
    "or checkpoint_every_seconds=) to hvd.DistributedOptimizer and relaunch the job: the server resumes from its "
    "last checkpoint with any number of workers (README: 'Checkpoint and restart'). Remove the hvd.elastic "
    "calls and call the training function directly."
)


def _refuse(what: str) -> NotImplementedError:
    return NotImplementedError(f"{what}: {ELASTIC_ADVICE}")


def run(func: Any) -> Any:
    """Horovod's ``@hvd.elastic.run``: raises :class:`NotImplementedError` (see module)."""
    raise _refuse("hvd.elastic.run")


class State:
    """Horovod's elastic ``State``: raises :class:`NotImplementedError` (see module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise _refuse(f"hvd.elastic.{type(self).__name__}")


class ObjectState(State):
    """Horovod's elastic ``ObjectState``: raises :class:`NotImplementedError`."""


class TorchState(ObjectState):
    """Horovod's elastic ``TorchState``: raises :class:`NotImplementedError`."""


class ElasticSampler:
    """Horovod's ``ElasticSampler``: raises :class:`NotImplementedError`; use
    ``torch.utils.data.distributed.DistributedSampler(num_replicas=hvd.size(), rank=hvd.rank())``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise _refuse("hvd.elastic.ElasticSampler")
