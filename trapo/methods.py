"""Deprecated: the SFT baseline lives in `trapo.sft`, method dispatch in `trapo.recipes`."""

from trapo._deprecated import reexport

globals().update(
    reexport(
        __name__,
        {
            "SFT_LOSS_KINDS": "trapo.sft",
            "TRAPOSFTConfig": "trapo.sft",
            "TrSFTTrainer": "trapo.sft",
            "expert_sft_dataset": "trapo.sft",
            "train_sft": "trapo.sft",
            "train_sft_then_grpo": "trapo.recipes",
            "train_method": "trapo.recipes",
        },
    )
)
