"""The public face of orthocond's optimizer plug-ins: ``import optim; optim.NOG(...)``.

The implementation lives in :mod:`orthocond.optim`, which orthocond's own code imports, so a
user's own ``optim`` package earlier on ``sys.path`` can never break orthocond's internals.
"""

from __future__ import annotations

from orthocond.optim import *  # noqa: F403
from orthocond.optim import (  # noqa: F401
    __all__,  # noqa: F401
    _common,
    cayley,
    nog,
    olr,
)
