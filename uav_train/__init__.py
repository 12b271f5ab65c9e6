"""Decoder side: streams activation stores into an adapter and a LoRA-tuned decoder."""

import warnings

# peft's PeftModel reads `is_gradient_checkpointing`, which transformers 5 deprecated: every LoRA load printed a
# FutureWarning about peft's code, not the user's. Only that message is silenced.
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
