"""Built-in data sets: TokFSM (codebook-features paper), copying and associative recall.

All generators are seeded numpy samplers that hand out torch ``LongTensor`` batches; see docs/design.md §4.
"""

from interp.data.copying import (
    COPY_BOS,
    COPY_N_SYMBOLS,
    COPY_PAD,
    COPY_SEP,
    COPY_VOCAB_SIZE,
    CopyBatch,
    copy_accuracy,
    copy_batches,
    copy_tokenizer,
    sample_copy_batch,
)
from interp.data.recall import (
    RECALL_BOS,
    RECALL_N_KEYS,
    RECALL_N_VALUES,
    RECALL_SEP,
    RECALL_VOCAB_SIZE,
    RecallBatch,
    recall_accuracy,
    recall_batches,
    sample_recall_batch,
)
from interp.data.tokfsm import (
    TOKFSM_BOS,
    TOKFSM_EDGE_SEED,
    TOKFSM_N_EDGES,
    TOKFSM_N_STATES,
    TOKFSM_SEQ_LEN,
    TOKFSM_VOCAB_SIZE,
    BatchEncoding,
    DigitTokenizer,
    TokFSM,
    tokfsm_batches,
    tokfsm_dataset,
    tokfsm_labels,
)

__all__ = [
    # TokFSM
    "TOKFSM_VOCAB_SIZE",
    "TOKFSM_BOS",
    "TOKFSM_N_STATES",
    "TOKFSM_N_EDGES",
    "TOKFSM_SEQ_LEN",
    "TOKFSM_EDGE_SEED",
    "TokFSM",
    "tokfsm_labels",
    "tokfsm_batches",
    "tokfsm_dataset",
    "DigitTokenizer",
    "BatchEncoding",
    # copying
    "COPY_N_SYMBOLS",
    "COPY_SEP",
    "COPY_BOS",
    "COPY_PAD",
    "COPY_VOCAB_SIZE",
    "CopyBatch",
    "sample_copy_batch",
    "copy_batches",
    "copy_accuracy",
    "copy_tokenizer",
    # associative recall
    "RECALL_N_KEYS",
    "RECALL_N_VALUES",
    "RECALL_SEP",
    "RECALL_BOS",
    "RECALL_VOCAB_SIZE",
    "RecallBatch",
    "sample_recall_batch",
    "recall_batches",
    "recall_accuracy",
]
