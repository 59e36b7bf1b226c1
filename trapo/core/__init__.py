"""Pure TRAPO math: losses, advantages, prefix cutting and the guidance schedule. No I/O."""

from trapo.core.advantages import group_advantages
from trapo.core.losses import (
    ENTROPY_TOKENS,
    LOSS_NORMALIZATIONS,
    PREFIX_LOSS_KINDS,
    luffy_token_loss,
    mixed_loss,
    policy_gradient_token_loss,
    prefix_token_loss,
    trsft_token_loss,
)
from trapo.core.prefix import cut_prefix
from trapo.core.schedule import (
    PAPER_SCHEDULE,
    REFERENCE_CODE_SCHEDULE,
    SCHEDULES,
    MicroGroup,
    is_guided,
    named_schedule,
    parse_schedule,
    schedule_size,
    validate_schedule,
)

__all__ = [
    "ENTROPY_TOKENS",
    "LOSS_NORMALIZATIONS",
    "PAPER_SCHEDULE",
    "PREFIX_LOSS_KINDS",
    "REFERENCE_CODE_SCHEDULE",
    "SCHEDULES",
    "MicroGroup",
    "cut_prefix",
    "group_advantages",
    "is_guided",
    "luffy_token_loss",
    "mixed_loss",
    "named_schedule",
    "parse_schedule",
    "policy_gradient_token_loss",
    "prefix_token_loss",
    "schedule_size",
    "trsft_token_loss",
    "validate_schedule",
]
