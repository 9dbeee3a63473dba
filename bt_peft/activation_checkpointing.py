"""Activation checkpointing under the name the installed transformers has.

Newer transformers 5 releases call it `activation_checkpointing_enable` / `is_activation_checkpointing` and keep
`gradient_checkpointing_enable` / `is_gradient_checkpointing` as deprecated aliases (with a `FutureWarning`, removed in
v6); older 5.x releases (5.17, the oldest bt-peft supports) have only the `gradient_checkpointing` names. bt-peft
goes through these two functions, which detect the public method, so it warns on none of them.
"""

from transformers import PreTrainedModel


def enable_activation_checkpointing(model: PreTrainedModel) -> None:
    """Turn on non-reentrant activation checkpointing of `model` (which also makes its embeddings' output require
    grad, as LoRA needs).

    Args:
        model (`PreTrainedModel`): the transformers model (not a peft wrapper), changed in place.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def is_activation_checkpointing(model: PreTrainedModel) -> bool:
    """Whether activation checkpointing is on in `model` (a transformers model, not a peft wrapper)."""
    if hasattr(type(model), "is_activation_checkpointing"):
        return model.is_activation_checkpointing
    return model.is_gradient_checkpointing
