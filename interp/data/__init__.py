"""Built-in data sets: TokFSM (codebook-features paper), copying and associative recall.

All generators are seeded numpy samplers that hand out torch ``LongTensor`` batches; see docs/design.md §4.
Each module's ``__all__`` is its public list; this package re-exports them.
"""

from interp.data import copying, recall, tokfsm
from interp.data.copying import *  # noqa: F403
from interp.data.recall import *  # noqa: F403
from interp.data.tokfsm import *  # noqa: F403

__all__ = [*tokfsm.__all__, *copying.__all__, *recall.__all__]
