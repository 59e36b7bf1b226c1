"""Training data: loaders for the layouts in circulation, OpenR1 preparation, row validation (docs/method.md,
"Data")."""

from trapo.data.loaders import expert_text, from_verl_parquet, from_verl_row, load_training_rows, read_table
from trapo.data.prepare import PrepareOptions, PrepareReport, merge_with_base, prepare_openr1, write_rows
from trapo.data.text import LUFFY_SYSTEM_PROMPT, after_think, chat_prompt, think_content, user_message
from trapo.data.validation import row_errors, validate_rows

__all__ = [
    "LUFFY_SYSTEM_PROMPT",
    "PrepareOptions",
    "PrepareReport",
    "after_think",
    "chat_prompt",
    "expert_text",
    "from_verl_parquet",
    "from_verl_row",
    "load_training_rows",
    "merge_with_base",
    "prepare_openr1",
    "read_table",
    "row_errors",
    "think_content",
    "user_message",
    "validate_rows",
    "write_rows",
]
